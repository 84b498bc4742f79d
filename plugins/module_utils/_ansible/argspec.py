# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One argument-spec builder for modules and action plugins, and the option groups shared between them.

Each group is documented once in plugins/doc_fragments/ (the fragment named next to it); a module or action
plugin merges the groups it takes with its own options and rules, then builds its AnsibleModule
(``create_ansible_module``) or validates its task arguments (``validate``) from the one spec.

ansible-core is imported only where it is used: the store and node states that import their spec from here are
unit-tested under Debian's python3 too, which has no ansible-core.
"""

from __future__ import annotations

import copy

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import DEFAULT_TIMEOUT

DEFAULT_STATE_DIR = "/var/lib/ironclaw"
DEFAULT_CONTROLLER_DIR = "~/.local/share/ironclaw"


class ArgumentSpec:
    """argument_spec and the rules between options (community.crypto's _argspec.ArgumentSpec)."""

    def __init__(
        self,
        argument_spec: dict | None = None,
        *,
        mutually_exclusive: list | None = None,
        required_together: list | None = None,
        required_one_of: list | None = None,
        required_if: list | None = None,
        required_by: dict | None = None,
        supports_check_mode: bool = True,
    ):
        self.argument_spec = copy.deepcopy(argument_spec or {})
        self.mutually_exclusive = list(mutually_exclusive or [])
        self.required_together = list(required_together or [])
        self.required_one_of = list(required_one_of or [])
        self.required_if = list(required_if or [])
        self.required_by = dict(required_by or {})
        self.supports_check_mode = supports_check_mode

    def update_argspec(self, **options: dict) -> ArgumentSpec:
        self.argument_spec.update(copy.deepcopy(options))
        return self

    def merge(self, other: ArgumentSpec) -> ArgumentSpec:
        """Add another spec's options and rules; an option defined in both is an error (one definition each)."""
        twice = sorted(set(self.argument_spec) & set(other.argument_spec))
        if twice:
            raise ValueError(f"options defined twice: {', '.join(twice)}")
        self.argument_spec.update(copy.deepcopy(other.argument_spec))
        self.mutually_exclusive.extend(other.mutually_exclusive)
        self.required_together.extend(other.required_together)
        self.required_one_of.extend(other.required_one_of)
        self.required_if.extend(other.required_if)
        for name, needs in other.required_by.items():
            self.required_by[name] = tuple(self.required_by.get(name, ())) + tuple(needs)
        self.supports_check_mode = self.supports_check_mode and other.supports_check_mode
        return self

    def _rules(self) -> dict:
        return {
            "mutually_exclusive": self.mutually_exclusive,
            "required_together": self.required_together,
            "required_one_of": self.required_one_of,
            "required_if": self.required_if,
            "required_by": self.required_by,
        }

    def create_ansible_module(self, **kwargs):
        from ansible.module_utils.basic import AnsibleModule  # noqa: PLC0415

        return AnsibleModule(
            argument_spec=self.argument_spec, supports_check_mode=self.supports_check_mode, **self._rules(), **kwargs
        )

    def validate(self, action) -> dict:
        """An action plugin's task arguments, validated like the module's (raises AnsibleActionFail)."""
        _valid, args = action.validate_argument_spec(argument_spec=self.argument_spec, **self._rules())
        return args

    def defaults(self) -> dict:
        """Every option at its default: the base of the arguments an in-process caller passes."""
        return {name: option.get("default") for name, option in self.argument_spec.items()}


# -- the shared groups, each with its doc fragment ------------------------------------------------------------------


def node_spec() -> ArgumentSpec:
    """The node's state and TPM (doc fragment ironclaw.sealed.node)."""
    from ansible.module_utils.basic import env_fallback  # noqa: PLC0415

    return ArgumentSpec(
        {
            "state_dir": {"type": "path", "default": DEFAULT_STATE_DIR},
            "tcti": {"type": "str", "fallback": (env_fallback, ["IRONCLAW_TCTI"])},
            "backend": {"type": "str", "default": "tpm2", "choices": ["tpm2", "software"]},
            "lock_timeout": {"type": "float", "default": DEFAULT_TIMEOUT},
        }
    )


def vm_spec(required: bool = True) -> ArgumentSpec:
    """One VM (doc fragment ironclaw.sealed.node.vm when required; optional, each module says when it is used)."""
    return ArgumentSpec(
        {
            "vmid": {"type": "int", "required": required},
            "vm_uuid": {"type": "str", "required": required},
        }
    )


def controller_spec() -> ArgumentSpec:
    """The controller's directory (doc fragment ironclaw.sealed.controller)."""
    return ArgumentSpec({"controller_dir": {"type": "path", "default": DEFAULT_CONTROLLER_DIR}})


def signing_spec() -> ArgumentSpec:
    """Where trust-root signatures are made (doc fragment ironclaw.sealed.controller.signing)."""
    return ArgumentSpec(
        {
            "signing": {"type": "str", "default": "online", "choices": ["online", "offline"]},
            "sign_dir": {"type": "path"},
        }
    )


def manifest_lifetime_spec() -> ArgumentSpec:
    """How long manifests live (doc fragment ironclaw.sealed.controller.lifetime)."""
    return ArgumentSpec(
        {
            "expires_days": {"type": "int", "default": 90},
            "max_days": {"type": "int", "default": 90},
            "resign_days": {"type": "int", "default": 30},
        }
    )


def store_spec(required: bool = False) -> ArgumentSpec:
    """The manifest store on the store host (doc fragment ironclaw.sealed.store)."""
    option = {"type": "path", "required": True} if required else {"type": "path"}
    return ArgumentSpec({"store_dir": option})


def spanning_spec() -> ArgumentSpec:
    """A module whose states run on the controller, a node and the store host (ironclaw_manifest, ironclaw_destroy):
    the node's options, one VM (given to the states that take one), the controller's and the store's."""
    return node_spec().merge(vm_spec(required=False)).merge(controller_spec()).merge(signing_spec()).merge(store_spec())


# The list of secrets is not secret (names, paths); its content fields are no_log.
SECRET_OPTIONS = {
    "name": {"type": "str", "required": True},
    "src": {"type": "path"},
    "content": {"type": "str", "no_log": True},
    "content_base64": {"type": "str", "no_log": True},
}


def secrets_option() -> dict:
    """The secrets option (typed suboptions; engine.load_secrets takes exactly one source per secret)."""
    return {
        "type": "list",
        "elements": "dict",
        "options": copy.deepcopy(SECRET_OPTIONS),
        "no_log": False,
    }

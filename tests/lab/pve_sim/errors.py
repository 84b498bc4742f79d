"""How Proxmox's CLIs fail: the message on stderr and the exit code.

Three shapes, from pve-common:

- a ``die`` in the API code (before any task starts) reaches Perl's top level:
  the message as is on stderr; the exit code is Perl's, ``$!`` when set (2,
  ENOENT, after a config file could not be read), else 255;
- a parameter exception: ``400 Parameter verification failed.``, one
  ``<param>: <message>`` line per parameter and the command's usage line
  (PVE::Exception::stringify, RESTHandler::cli_handler), exit 255;
- an error inside a task (``qm start``, ``stop``, ``shutdown``, ``migrate`` run
  their work as a foreground task): the task's last line becomes
  ``TASK ERROR: <message with newlines as spaces>`` and the CLI prints the
  message on stderr and exits with 255 (RESTEnvironment::fork_worker,
  qm.pm's ``$upid_exit``).
"""

from __future__ import annotations

import sys

EXIT_ERRNO_ENOENT = 2
EXIT_DIE = 255


class PveError(Exception):
    """A die() of the Proxmox code; ``str()`` is the exact stderr text."""

    def __init__(self, message: str, exit_code: int = EXIT_DIE):
        if not message.endswith("\n"):
            message += "\n"
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def param_error(errors: dict[str, str], usage: str) -> PveError:
    text = "400 Parameter verification failed.\n"
    for name, message in errors.items():
        text += f"{name}: {message}\n"
    return PveError(text + usage)


def config_missing(node: str, vmid: int) -> PveError:
    """PVE::AbstractConfig::load_config on a VM that has no config on `node`."""
    return PveError(
        f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist", exit_code=EXIT_ERRNO_ENOENT
    )


def task_error_text(message: str) -> str:
    """What the CLI prints for an error inside a task: one trailing newline dropped, the rest become spaces."""
    if message.endswith("\n"):
        message = message[:-1]
    return message.replace("\n", " ") + "\n"


def fail(err: PveError, in_task: bool) -> int:
    sys.stdout.flush()
    sys.stderr.write(task_error_text(err.message) if in_task else err.message)
    sys.stderr.flush()
    return EXIT_DIE if in_task else err.exit_code

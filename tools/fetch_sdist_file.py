"""Fetch one file out of a pinned sdist from the package index pip is set up with.

usage: fetch_sdist_file.py PROJECT VERSION SHA256 MEMBER DEST

Reads the index list from `pip config list` (the same settings pip install uses: pip.conf,
PIP_INDEX_URL, extra indexes such as a local mirror; else pip's own default), fetches each
index's PEP 503 page for the project until one lists the sdist with the pinned hash, downloads
it, verifies the bytes, and writes the one MEMBER (its path below the sdist's top folder) under
DEST. Used by the Makefile for micropython-lib's umqtt.simple, whose sdist is a bare tarball
(no setup.py) that pip will not install.
"""
import ast
import hashlib
import html
import io
import os
import re
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request


def norm(name):
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def get(url):
    # A file: index is a folder tree; its pages are the folders' index.html.
    if url.startswith("file:") and os.path.isdir(urllib.request.url2pathname(urllib.parse.urlparse(url).path)):
        url = url.rstrip("/") + "/index.html"
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def indexes():
    """The index URLs pip install would use: its main index first, then the extra ones."""
    conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                          capture_output=True, text=True).stdout
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
    return main + extra


def extract(data, fname, member, dest):
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


def main(project, version, sha, member, dest):
    tried = []
    for index in indexes():
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
            extract(data, fname, member, dest)
            print("%s %s: %s from %s (sha256 ok)" % (project, version, member, page))
            return
        tried.append("%s: no %s-%s sdist listed" % (page, project, version))
    sys.exit("%s %s not found:\n  %s" % (project, version, "\n  ".join(tried)))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:6])

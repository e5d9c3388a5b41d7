"""The README's "Try it" block, run as written: `make run`'s anchor (its very command line, on a
free port instead of 7420 so parallel tests do not collide), then every `.venv/bin/...` line in
order, in a folder laid out like the checkout, with CODE replaced by what `anchorctl pair`
printed. A README whose commands do not work fails here."""
import os
import re
import shutil
import subprocess

from tests.support.harness import ROOT
from tests.support.services import free_port


def try_it_lines():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text[text.index("## Try it"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_try_it_runs_as_written(tmp_path):
    lines = try_it_lines()
    assert lines[0].startswith("make demo") and lines[1].startswith("make run")
    with open(os.path.join(ROOT, "Makefile")) as f:
        run_cmd = re.search(r"^run:.*\n\t(.+)$", f.read(), re.M).group(1)
    assert run_cmd == "$(BIN)/anchor serve"
    # A checkout as the reader has it: the venv, the docs to back up.
    os.symlink(os.path.join(ROOT, ".venv"), str(tmp_path / ".venv"))
    shutil.copytree(os.path.join(ROOT, "docs"), str(tmp_path / "docs"))
    port = free_port()
    anchor = subprocess.Popen([str(tmp_path / ".venv" / "bin" / "anchor"), "serve",
                               "--listen", "tcp://127.0.0.1:%d" % port],
                              cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "data in" in anchor.stdout.readline()
        code = None
        for line in lines[2:]:
            assert line.startswith(".venv/bin/"), line
            line = line.replace("127.0.0.1:7420", "127.0.0.1:%d" % port)
            if "CODE" in line:
                assert code, "the README pairs before it prints a code"
                line = line.replace("CODE", code)
            p = subprocess.run(line.split(), cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, (line, p.stdout, p.stderr)
            if " pair " in line and "anchorctl" in line:
                code = re.search(r"pairing code for \S+:\s+(\S+)", p.stdout).group(1)
        restored = tmp_path / "var" / "restored"
        for name in os.listdir(str(tmp_path / "docs")):
            with open(str(tmp_path / "docs" / name), "rb") as a, open(str(restored / name), "rb") as b:
                assert a.read() == b.read(), name
    finally:
        anchor.terminate()
        assert anchor.wait(timeout=30) == 0
        anchor.stdout.close()
        anchor.stderr.close()

"""Restore writes what a careful tool writes: no setuid/setgid bits unless asked, sparse files
stay sparse, names with control characters are shown escaped, and one file restored by its
path into a new folder gets its parents."""
import os
import stat

import pytest

from tests.support.harness import AnchorProc, anchorctl, run_rover


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_setuid_and_setgid_only_when_asked(tmp_path, anchor, runtime):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    tool = src / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(tool, 0o6755)
    if os.stat(tool).st_mode & 0o6000 != 0o6000:
        pytest.skip("this filesystem does not keep setuid/setgid bits")
    run_rover(runtime, anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))

    anchorctl(anchor.address, "restore", "phone", "--to", str(tmp_path / "plain"))
    assert stat.S_IMODE(os.stat(tmp_path / "plain" / "bin" / "tool").st_mode) == 0o755
    anchorctl(anchor.address, "restore", "phone", "--to", str(tmp_path / "kept"), "--keep-special-bits")
    assert stat.S_IMODE(os.stat(tmp_path / "kept" / "bin" / "tool").st_mode) == 0o6755


def test_sparse_files_stay_sparse(tmp_path, anchor):
    src = tmp_path / "src"
    src.mkdir()
    size = 32 << 20
    with open(src / "disk.img", "wb") as f:
        f.write(b"boot" * 1024)
        f.seek(16 << 20)
        f.write(b"middle" * 1000)
        f.truncate(size)                    # ends in a hole
    if os.stat(src / "disk.img").st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not make holes")
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))

    out = tmp_path / "out"
    anchorctl(anchor.address, "restore", "phone", "--to", str(out))
    got = out / "disk.img"
    assert os.path.getsize(got) == size
    assert got.read_bytes() == (src / "disk.img").read_bytes()
    # 32 MiB of content, of which 10 KB are not zeros: on disk, well under 1 MiB.
    assert os.stat(got).st_blocks * 512 < 1 << 20, os.stat(got).st_blocks


def test_ls_escapes_control_characters(tmp_path, anchor):
    src = tmp_path / "src"
    src.mkdir()
    (src / "evil\x1b[2J\nname").write_bytes(b"x")
    (src / "back\\slash").write_bytes(b"y")
    os.symlink("to\rwhere", src / "link\t")
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))

    p = anchorctl(anchor.address, "ls", "phone")
    assert "\x1b" not in p.stdout and "\r" not in p.stdout and "\t" not in p.stdout
    lines = p.stdout.splitlines()
    assert len(lines) == 3, p.stdout            # one line per entry: no name breaks a line
    assert any(line.endswith("  evil\\x1b[2J\\nname") for line in lines), p.stdout
    assert any(line.endswith("  back\\\\slash") for line in lines), p.stdout
    assert any(line.endswith("  link\\t -> to\\rwhere") for line in lines), p.stdout
    # --json keeps the names exact
    assert '"evil\\u001b[2J\\nname"' in anchorctl(anchor.address, "ls", "phone", "--json").stdout


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_restore_one_path_into_a_new_folder_makes_its_parents(tmp_path, anchor, runtime):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"deep\n")
    (src / "a" / "b" / "sub").mkdir()
    (src / "a" / "b" / "sub" / "g").write_bytes(b"deeper\n")
    (src / "other").write_bytes(b"not asked for\n")
    run_rover(runtime, anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))

    new = tmp_path / "new" / "dir"
    anchorctl(anchor.address, "restore", "phone", "--path", "a/b/f", "--to", str(new))
    assert (new / "a" / "b" / "f").read_bytes() == b"deep\n"
    assert sorted(os.listdir(new)) == ["a"]
    anchorctl(anchor.address, "restore", "phone", "--path", "a/b/sub", "--to", str(tmp_path / "n2"))
    assert (tmp_path / "n2" / "a" / "b" / "sub" / "g").read_bytes() == b"deeper\n"

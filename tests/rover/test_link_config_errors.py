"""A link setting that is wrong (an unknown scheme, a malformed address) ends the rover's
run at once with its reason and exit status 2: it is not a lost link, and retrying it
only delays the message (by 1 + 2 + 3 s with --retries 3)."""
import subprocess
import time

import pytest

from tests.support.harness import rover_cmd


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
@pytest.mark.parametrize("url", ["radio://anchor:7420", "tcp://127.0.0.1:notaport", "tcp://127.0.0.1:7420?nosuch=1"])
def test_a_wrong_address_is_not_retried(tmp_path, runtime, url):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    t0 = time.monotonic()
    p = subprocess.run(rover_cmd(runtime, url, "rover-c", str(tmp_path / "state"), "backup", str(src),
                                 "--retries", "3"), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "resuming" not in p.stdout and "attempts" not in p.stdout + p.stderr, p.stdout
    assert "backup failed" in p.stderr, p.stderr
    assert took < 5, took


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_a_damaged_pairing_key_is_not_retried(tmp_path, runtime):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    state = tmp_path / "state"
    state.mkdir()
    (state / "pairing.key").write_bytes(b"short")
    p = subprocess.run(rover_cmd(runtime, "tcp://127.0.0.1:9", "rover-c", str(state), "backup", str(src),
                                 "--retries", "3"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "pair again" in p.stderr, (p.returncode, p.stdout, p.stderr)
    assert "resuming" not in p.stdout, p.stdout

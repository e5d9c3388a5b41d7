"""`anchor serve --fleet ...`: every mistake an operator can make is one clear line, before
anything is opened; credentials never come from the command line."""
import os
import subprocess

import pytest

from anchor.fleet import keys
from anchor.fleet.service import FleetConfig, FleetConfigError, in_window, parse_window
from tests.support.harness import BIN


def key_file(tmp_path, mode=0o600):
    p = str(tmp_path / "fleet.key")
    keys.write_key_file(p, keys.new_key())
    os.chmod(p, mode)
    return p


ENV = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


@pytest.mark.parametrize("url,endpoint,words", [
    ("bucket", "http://127.0.0.1:1", "s3://BUCKET"),
    ("s3://", "http://127.0.0.1:1", "s3://BUCKET"),
    ("s3://b/sub/dir", "http://127.0.0.1:1", "s3://BUCKET"),
    ("s3://b", None, "--fleet-endpoint"),
    ("s3://b", "ftp://x", "--fleet-endpoint"),
])
def test_bad_addresses_are_named(tmp_path, url, endpoint, words):
    with pytest.raises(FleetConfigError, match=words.replace("-", r"\-")):
        FleetConfig(url, endpoint, key_file(tmp_path), env=ENV)


def test_key_file_must_exist_be_private_and_hold_a_key(tmp_path):
    with pytest.raises(FleetConfigError, match="no such fleet key file"):
        FleetConfig("s3://b", "http://h", str(tmp_path / "nope"), env=ENV)
    with pytest.raises(FleetConfigError, match="readable by others"):
        FleetConfig("s3://b", "http://h", key_file(tmp_path, 0o644), env=ENV)
    bad = tmp_path / "short.key"
    bad.write_text("abcd\n")
    bad.chmod(0o600)
    with pytest.raises(FleetConfigError, match="64 hexadecimal digits"):
        FleetConfig("s3://b", "http://h", str(bad), env=ENV)
    with pytest.raises(FleetConfigError, match="needs --fleet-key-file"):
        FleetConfig("s3://b", "http://h", None, env=ENV)
    # never written over: the fleet's data would become unreadable to this anchor
    with pytest.raises(FileExistsError):
        keys.write_key_file(str(tmp_path / "fleet.key"), keys.new_key())


def test_credentials_from_a_file_or_the_environment_only(tmp_path):
    k = key_file(tmp_path)
    with pytest.raises(FleetConfigError, match="AWS_ACCESS_KEY_ID"):
        FleetConfig("s3://b", "http://h", k, env={})
    c = FleetConfig("s3://b", "http://h", k, env=ENV)
    assert (c.access_key, c.secret_key) == ("id", "secret")
    cred = tmp_path / "cred.toml"
    cred.write_text('access_key = "a"\nsecret_key = "s"\nregion = "eu-west-1"\n')
    c = FleetConfig("s3://b", "http://h", k, str(cred), env={})
    assert (c.access_key, c.secret_key, c.region) == ("a", "s", "eu-west-1")
    cred.write_text('access_key = "a"\n')
    with pytest.raises(FleetConfigError, match="secret_key"):
        FleetConfig("s3://b", "http://h", k, str(cred), env={})
    cred.write_text('access_key = \n')
    with pytest.raises(FleetConfigError, match="cannot read"):
        FleetConfig("s3://b", "http://h", k, str(cred), env={})


def test_window():
    assert parse_window("01:00-05:30") == (60, 330)
    for bad in ("1-2", "25:00-01:00", "01:00-01:00", "01:00", "aa:bb-cc:dd"):
        with pytest.raises(FleetConfigError, match="fleet-window"):
            parse_window(bad)
    import time
    t = time.mktime((2026, 12, 4, 3, 0, 0, 0, 0, -1))
    assert in_window((60, 330), t) and not in_window((240, 330), t)
    assert in_window((22 * 60, 4 * 60), t)            # wraps past midnight
    assert in_window(None, t)


def test_serve_refuses_a_bad_fleet_before_opening_anything(tmp_path):
    data = tmp_path / "data"
    p = subprocess.run([os.path.join(BIN, "anchor"), "serve", "--data", str(data), "--fleet", "s3://b",
                        "--fleet-endpoint", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY=""))
    assert p.returncode == 2 and "--fleet-key-file" in p.stderr, p.stderr
    assert not data.exists()

"""`anchor serve --config FILE`: every flag is a key, flags win, bad files are refused with the
key named and nothing created; docs/configuration.md lists every key."""
import os
import re
import subprocess

import pytest

from anchor.api import cli, config
from tests.support.harness import BIN, ROOT

# A value for every key that differs from its default, and what the parsed option must be.
EVERY = {
    "data": ("\"/srv/anchor\"", "/srv/anchor"),
    "listen": ("\"tcp://0.0.0.0:7555\"", "tcp://0.0.0.0:7555"),
    "mgmt": ("\"unix:/run/anchor/mgmt.sock\"", "unix:/run/anchor/mgmt.sock"),
    "broker": ("\"mqtt://127.0.0.1:1883\"", "mqtt://127.0.0.1:1883"),
    "no-mqtt-links": ("true", True),
    "broker-ca": ("\"/etc/anchor/broker-ca.pem\"", "/etc/anchor/broker-ca.pem"),
    "broker-user": ("\"anchor\"", "anchor"),
    "broker-password-file": ("\"/etc/anchor/broker.pw\"", "/etc/anchor/broker.pw"),
    "serial": ("[\"/dev/ttyUSB0:57600\", \"/dev/ttyACM0\"]", ["/dev/ttyUSB0:57600", "/dev/ttyACM0"]),
    "ble": ("true", True),
    "ble-allow": ("[\"anchor-rover-1\"]", ["anchor-rover-1"]),
    "proxy": ("\"tcp://127.0.0.1:3128\"", "tcp://127.0.0.1:3128"),
    "open": ("true", True),
    "http": ("\"tcp://0.0.0.0:8080\"", "tcp://0.0.0.0:8080"),
    "http-token-file": (None, None),     # filled in per test: the file must exist
    "capacity": ("\"20G\"", "20G"),
    "spool-max": ("\"256M\"", "256M"),
    "relay-timeout": ("12.5", 12.5),
    "fleet": ("\"s3://anchor-fleet\"", "s3://anchor-fleet"),
    "fleet-endpoint": ("\"https://s3.example.net\"", "https://s3.example.net"),
    "fleet-key-file": ("\"/etc/anchor/fleet.key\"", "/etc/anchor/fleet.key"),
    "fleet-credentials-file": ("\"/etc/anchor/fleet-store.toml\"", "/etc/anchor/fleet-store.toml"),
    "fleet-rate": ("\"500K\"", "500K"),
    "fleet-window": ("\"01:00-05:30\"", "01:00-05:30"),
    "fleet-captures": ("\"no-recipe\"", "no-recipe"),
    "fleet-interval": ("60.0", 60.0),
    "ready-file": ("\"/run/anchor/port\"", "/run/anchor/port"),
    "verbose": ("true", True),
}


def write(tmp_path, text, name="anchor.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def keys():
    return sorted(config.options(cli.build_parser()[1]))


def test_every_key_is_tested_and_documented():
    # A flag added to `anchor serve` is a key by itself; this list and the doc must follow.
    assert keys() == sorted(EVERY)
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        doc = f.read()
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", doc, re.M))
    assert documented == set(EVERY)


def test_every_key_reaches_the_options(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-some-length\n")
    token.chmod(0o600)
    every = dict(EVERY, **{"http-token-file": ('"%s"' % token, str(token))})
    path = write(tmp_path, "".join("%s = %s\n" % (k, v[0]) for k, v in every.items()))
    args, err = cli.options(["serve", "--config", path])
    assert err is None
    for key, (_, want) in every.items():
        assert getattr(args, key.replace("-", "_")) == want, key


def test_flags_win_over_the_file(tmp_path):
    path = write(tmp_path, 'data = "/from/file"\nspool-max = "2G"\nserial = ["/dev/ttyS1"]\nopen = true\n')
    args, err = cli.options(["serve", "--data", "/from/flag", "--config", path, "--serial=/dev/ttyS9"])
    assert err is None
    assert args.data == "/from/flag"
    assert args.serial == ["/dev/ttyS9"]          # the flags' list replaces the file's
    assert args.spool_max == "2G" and args.open is True
    args, _ = cli.options(["serve", "--config", path])
    assert args.data == "/from/file" and args.serial == ["/dev/ttyS1"]
    # Without a file the embedded defaults stand.
    args, _ = cli.options(["serve"])
    assert args.data == cli.DEFAULT_DATA and args.spool_max == "1G" and args.open is False


@pytest.mark.parametrize("text, words", [
    ('bogus = 1\n', ["unknown key 'bogus'"]),
    ('spool_max = "1G"\n', ["unknown key 'spool_max'", "did you mean 'spool-max'"]),
    ('[server]\nlisten = "tcp://127.0.0.1:1"\n', ["unknown key 'server'"]),
    ('open = "yes"\n', ["key open", "true or false"]),
    ('serial = "/dev/ttyUSB0"\n', ["key serial", "list of strings"]),
    ('relay-timeout = "fast"\n', ["key relay-timeout", "number"]),
    ('relay-timeout = 0\n', ["key relay-timeout", "above 0"]),
    ('ready-file = 7\n', ["key ready-file", "string"]),
    ('spool-max = "lots"\n', ["key spool-max", "'lots'"]),
    ('capacity = "-5G"\n', ["key capacity"]),
    ('listen = "tcp:/127.0.0.1"\n', ["key listen", "tcp://HOST:PORT"]),
    ('broker = "http://x:1"\n', ["key broker"]),
    ('mgmt = "/no/scheme"\n', ["key mgmt"]),
    ('http = "http://0.0.0.0:80"\n', ["key http"]),
    ('http-token-file = "/nonexistent/token"\n', ["key http-token-file", "cannot read"]),
    ('serial = ["/dev/ttyS0", "serial:/dev/x?bogus=1"]\n', ["key serial", "bogus"]),
    ('listen = "tcp://127.0.0.1:1\n', ["not valid TOML", "line 2"]),
])
def test_bad_files_are_refused_naming_the_key_and_nothing_is_created(tmp_path, capsys, text, words):
    data = tmp_path / "data"
    path = write(tmp_path, 'data = "%s"\n' % data + text)
    assert cli.main(["serve", "--config", path]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and path in line, line
    for w in words:
        assert w in line, (w, line)
    assert not data.exists()


def test_missing_file_is_one_line(tmp_path):
    p = subprocess.run([os.path.join(BIN, "anchor"), "serve", "--config", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip() == "anchor: %s: no such configuration file" % (tmp_path / "nope.toml")


def test_a_daemon_runs_from_its_file(tmp_path):
    """The file's data, listen and ready-file are the ones a real daemon uses."""
    data, ready = tmp_path / "store", tmp_path / "port"
    path = write(tmp_path, 'data = "%s"\nlisten = "tcp://127.0.0.1:0"\nready-file = "%s"\nopen = true\n'
                 'mgmt = "unix:%s"\n' % (data, ready, tmp_path / "m.sock"))
    proc = subprocess.Popen([os.path.join(BIN, "anchor"), "serve", "--config", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()       # the first hint line comes once it listens
        assert "data in %s" % data in line, line
        assert ready.read_text().strip().isdigit()
        assert (data / "ANCHOR-DATA").exists() and (tmp_path / "m.sock").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
        proc.stderr.close()

"""The anchor and a broker as deployed: mosquitto with a TLS listener (certificates made by the
test) and a password file, no anonymous access. A relayed publish and the MQTT link listener
go through it; a wrong password, a wrong CA and a plain connection to the TLS port each fail
with an error that says which."""
import os
import shutil
import ssl
import subprocess

import pytest

from tests.support.harness import BIN, AnchorProc, run_rover
from tests.support.services import Broker, Subscriber

OPENSSL = shutil.which("openssl")
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs openssl to make the test certificates")


def make_ca(d, name):
    key, pem = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", pem, "-days", "2", "-subj", "/CN=" + name], check=True, capture_output=True)
    return key, pem


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ca_key, ca = make_ca(d, "test-ca")
    _, other_ca = make_ca(d, "other-ca")
    key, csr, crt, ext = (os.path.join(d, n) for n in ("srv.key", "srv.csr", "srv.pem", "ext"))
    subprocess.run([OPENSSL, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", "/CN=localhost"], check=True, capture_output=True)
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", crt, "-days", "2", "-extfile", ext], check=True, capture_output=True)
    passwd = os.path.join(d, "passwd")
    subprocess.run([PASSWD, "-c", "-b", passwd, "anchor", "anchor-secret-1"], check=True, capture_output=True)
    subprocess.run([PASSWD, "-b", passwd, "watcher", "watcher-secret-2"], check=True, capture_output=True)
    # Started as root, mosquitto would drop to its own user, who cannot enter pytest's
    # private folders: it keeps the test's user instead.
    stay = ["user root"] if os.geteuid() == 0 else []
    broker = Broker(d, conf_lines=stay + ["cafile " + ca, "certfile " + crt, "keyfile " + key,
                                          "allow_anonymous false", "password_file " + passwd])
    pw = os.path.join(d, "anchor.pw")
    with open(pw, "w") as f:
        f.write("anchor-secret-1\n")
    bad_pw = os.path.join(d, "bad.pw")
    with open(bad_pw, "w") as f:
        f.write("not-the-password\n")
    yield {"dir": d, "ca": ca, "other_ca": other_ca, "port": broker.port, "pw": pw, "bad_pw": bad_pw,
           "broker": broker}
    broker.close()


def watcher(t):
    def setup(c):
        c.username_pw_set("watcher", "watcher-secret-2")
        c.tls_set_context(ssl.create_default_context(cafile=t["ca"]))
    return Subscriber(t["port"], "rover/#", setup=setup)


def anchor_with(tmp_path, t, *extra):
    return AnchorProc(str(tmp_path / "anchor"), "--broker", "mqtts://localhost:%d" % t["port"],
                      "--relay-timeout", "5", *extra).start()


def publish(a, tmp_path):
    f = tmp_path / "msg.txt"
    f.write_bytes(b"temperature 21.5\n")
    return run_rover("cpython", a.link, "rv", str(tmp_path / "state"), "publish", "rover/log",
                     "--file", str(f), check=False, timeout=60)


def test_relayed_publish_and_mqtt_links_over_tls_with_a_password(tls, tmp_path):
    sub = watcher(tls)
    a = anchor_with(tmp_path, tls, "--broker-ca", tls["ca"], "--broker-user", "anchor",
                    "--broker-password-file", tls["pw"])
    try:
        p = publish(a, tmp_path)
        assert p.returncode == 0, p.stderr
        assert sub.wait(1, timeout=20) and sub.messages[0] == ("rover/log", b"temperature 21.5\n")
        # The MQTT link listener logged in too (its subscription was confirmed).
        with open(os.path.join(a.data_dir, "anchor.log")) as f:
            log = f.read()
        assert "listening on anchor/v1/+/up at mqtts://localhost:%d" % tls["port"] in log, log[-3000:]
    finally:
        a.stop()
        sub.close()


@pytest.mark.parametrize("case", ["wrong password", "wrong CA", "plain to the TLS port", "no CA given"])
def test_misconfigured_broker_fails_clearly(tls, tmp_path, case):
    if case == "wrong password":
        a = anchor_with(tmp_path, tls, "--broker-ca", tls["ca"], "--broker-user", "anchor",
                        "--broker-password-file", tls["bad_pw"])
        says = "bad user name or password"
    elif case == "wrong CA":
        a = anchor_with(tmp_path, tls, "--broker-ca", tls["other_ca"], "--broker-user", "anchor",
                        "--broker-password-file", tls["pw"])
        says = "certificate was not accepted"
    elif case == "no CA given":
        a = anchor_with(tmp_path, tls, "--broker-user", "anchor", "--broker-password-file", tls["pw"])
        says = "--broker-ca names the CA"
    else:
        a = AnchorProc(str(tmp_path / "anchor"), "--broker", "mqtt://localhost:%d" % tls["port"],
                       "--relay-timeout", "5").start()
        says = "broker"
    try:
        p = publish(a, tmp_path)
        assert p.returncode != 0 and says in p.stderr, (case, p.stderr)
        assert "Traceback" not in p.stderr
    finally:
        a.stop()


@pytest.mark.parametrize("args, says", [
    (["--broker", "mqtt://127.0.0.1:1883", "--broker-ca", "CA"], "needs a mqtts:// broker"),
    (["--broker", "mqtts://127.0.0.1:8883", "--broker-ca", "/nonexistent.pem"], "cannot read it"),
    (["--broker", "mqtts://127.0.0.1:8883", "--broker-ca", "NOTCERT"], "not a PEM certificate"),
    (["--broker", "mqtts://127.0.0.1:8883", "--broker-password-file", "PW"], "needs --broker-user"),
    (["--broker-user", "x"], "need --broker"),
])
def test_bad_broker_options_stop_before_anything_is_opened(tmp_path, args, says):
    notcert = tmp_path / "notcert.pem"
    notcert.write_text("hello\n")
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    args = [{"CA": str(ca), "NOTCERT": str(notcert), "PW": str(pw)}.get(x, x) for x in args]
    p = subprocess.run([os.path.join(BIN, "anchor"), "serve", "--data", str(tmp_path / "d")] + args,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and says in p.stderr and "\n" not in p.stderr.strip(), p.stderr
    assert not (tmp_path / "d").exists()

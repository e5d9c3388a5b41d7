"""`anchor serve --http`: the status page in a real browser (Debian's chromium, headless) after
a real backup, /metrics parsed with Prometheus' own parser against the catalog's numbers, and
who may look (token, local network), read-only."""
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from anchor.api import web
from tests.support.harness import AnchorProc, anchorctl, make_tree, run_rover
from tests.support.services import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = os.environ.get("ANCHOR_ARTIFACTS")


@pytest.fixture(scope="module")
def anchor(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    port = free_port()
    a = AnchorProc(str(tmp / "data"), "--http", "tcp://127.0.0.1:%d" % port).start()
    a.http = "http://127.0.0.1:%d" % port
    src = tmp / "phone"
    make_tree(str(src), 30, 400000, seed=5)
    run_rover("cpython", a.link, "field-phone", str(tmp / "state"), "backup", "-q", str(src))
    yield a
    a.stop()


def get(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def chromium(*args, timeout=90):
    # No network beyond loopback, no first-run or update traffic, a throwaway profile.
    profile = args[0]
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-first-run",
         "--disable-quic", "--user-data-dir=" + profile] + list(args[1:]),
        capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup installs it)")
def test_page_renders_in_a_real_browser(anchor, tmp_path):
    p = chromium(str(tmp_path / "profile"), "--window-size=412,915", "--virtual-time-budget=5000",
                 "--dump-dom", anchor.http + "/")
    dom = p.stdout
    assert "field-phone" in dom, p.stderr[-2000:]
    assert 'id="device-field-phone"' in dom
    assert "<svg" in dom and 'class="radio"' in dom          # the plot, with a bar for today
    # The figures the page shows are the catalog's.
    stats = __import__("json").loads(anchorctl(anchor.address, "stats", "--json").stdout)
    c = stats["devices"]["field-phone"]
    radio = c.get("link_control", 0) + c.get("link_backup", 0)
    assert '<dd class="radio-bytes">%s</dd>' % web.size(radio) in dom
    assert "Kept by snapshots" in dom and "Last backup" in dom
    shot = tmp_path / "status-page.png"
    p = chromium(str(tmp_path / "profile2"), "--window-size=412,915", "--hide-scrollbars",
                 "--screenshot=%s" % shot, anchor.http + "/")
    assert shot.exists() and shot.stat().st_size > 2000, p.stderr[-2000:]
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if ARTIFACTS:
        os.makedirs(ARTIFACTS, exist_ok=True)
        shutil.copy(shot, os.path.join(ARTIFACTS, "status-page.png"))


def test_metrics_match_the_catalog(anchor):
    status, headers, text = get(anchor.http + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    fam = {f.name: f for f in text_string_to_metric_families(text)}
    stats = __import__("json").loads(anchorctl(anchor.address, "stats", "--json").stdout)
    c = stats["devices"]["field-phone"]

    def sample(name, **labels):
        for s in fam[name].samples:
            if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created"):
                return s.value
        raise AssertionError("no %s %r" % (name, labels))

    assert sample("anchor_devices") == 1
    assert sample("anchor_link_bytes", device="field-phone", purpose="backup") == c["link_backup"]
    assert sample("anchor_backup_content_bytes", device="field-phone", source="uploaded") == c["supplied_uploaded"]
    assert sample("anchor_backups", device="field-phone") == 1
    snaps = __import__("json").loads(anchorctl(anchor.address, "snapshots", "field-phone", "--json").stdout)
    assert abs(sample("anchor_last_backup_timestamp_seconds", device="field-phone") - snaps[-1]["time"]) < 1e-3
    # Every stored chunk is kept by the snapshot: all pinned, nothing passed through.
    assert sample("anchor_store_bytes", **{"class": "pinned"}) == stats["store"]["live_bytes"] > 0
    assert sample("anchor_store_bytes", **{"class": "passthrough"}) == 0
    assert sample("anchor_backup_overdue", device="field-phone") == 0
    assert sample("anchor_sessions") >= 1


def test_read_only_and_headers(anchor):
    status, headers, _ = get(anchor.http + "/")
    assert status == 200
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for method in ("POST", "DELETE", "PUT"):
        assert get(anchor.http + "/", method=method)[0] == 405
    assert get(anchor.http + "/v1/devices")[0] == 404        # no management over --http


def test_token_and_local_network_rules(tmp_path):
    token = tmp_path / "token"
    token.write_text("correct-horse-battery-staple\n")
    token.chmod(0o644)
    port = free_port()
    # A token file others can read is refused at start, naming the key.
    p = subprocess.run([os.path.join(os.path.dirname(__import__("sys").executable), "anchor"), "serve",
                        "--data", str(tmp_path / "d0"), "--http", "tcp://127.0.0.1:%d" % port,
                        "--http-token-file", str(token)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "readable by other users" in p.stderr
    token.chmod(0o600)
    a = AnchorProc(str(tmp_path / "d"), "--http", "tcp://127.0.0.1:%d" % port, "--http-token-file", str(token)).start()
    try:
        url = "http://127.0.0.1:%d" % port
        assert get(url + "/")[0] == 401
        assert get(url + "/metrics", {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
        assert get(url + "/metrics", {"Authorization": "Bearer correct-horse-battery-staple"})[0] == 200
        status, headers, _ = get(url + "/?token=correct-horse-battery-staple")
        assert status == 200 and "anchor_token=" in headers.get("Set-Cookie", "")
    finally:
        a.stop()
    # Without a token: loopback, RFC 1918, ULA and link-local may look; the internet may not.
    for ok in ("127.0.0.1", "10.1.2.3", "192.168.1.20", "172.16.0.9", "fd00::1", "fe80::1%eth0", "::1",
               "::ffff:192.168.1.2"):
        assert web.allowed_without_token(ok), ok
    for no in ("8.8.8.8", "2001:4860::8888", "100.64.0.1", "", "garbage"):
        assert not web.allowed_without_token(no), no

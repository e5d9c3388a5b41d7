"""rover/run.py's pieces on CPython: durations and jitter as typed, the loop's backoff,
count and cheaper-link probes with a stand-in backup (the real one: tests/e2e/test_run.py),
and rover/boot.py's check of rover.json (on MicroPython: tests/e2e/test_run_board.py)."""
import socket

import pytest

from rover import boot, run


@pytest.mark.parametrize("text,seconds", [
    ("90", 90), ("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800), ("1.5h", 5400),
    ("0.5s", 0.5), (7, 7), (2.5, 2.5),
])
def test_durations(text, seconds):
    assert run.duration(text, "--every") == seconds


@pytest.mark.parametrize("text", ["often", "", "0", "0s", "-5", "5x", "1e3", "inf", "nan", " 5",
                                  "5 h", ".", "1.2.3", "h", "400d", True, None, [5], -1])
def test_bad_durations_name_the_setting(text):
    with pytest.raises(ValueError) as e:
        run.duration(text, "--every")
    assert str(e.value).startswith("--every must be a duration like 6h, got ")


def test_jitter():
    assert run.jitter("10%", 3600, "--jitter") == 360
    assert run.jitter("0", 3600, "--jitter") == 0
    assert run.jitter("5m", 3600, "--jitter") == 300
    assert run.jitter("100%", 60, "--jitter") == 60
    for bad in ("101%", "x%", "%", "-1%", "often"):
        with pytest.raises(ValueError, match="--jitter must be a share of the period"):
            run.jitter(bad, 3600, "--jitter")
    with pytest.raises(ValueError, match="not be longer than the period"):
        run.jitter("2h", 3600, "--jitter")


def test_random_waits_differ_and_stay_in_the_jitter():
    draws = [run._random() for _ in range(50)]
    assert all(0 <= d < 1 for d in draws)
    assert len(set(draws)) > 40


def serve(sch, backup):
    """rover/run_loop.py's loop with a stand-in backup (and no module unloading)."""
    code = None
    while True:
        url = run.step(sch, code)       # sch: the run's state list
        if type(url) is int:
            return url
        code = backup(url)


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield "tcp://127.0.0.1:%d" % s.getsockname()[1]
    s.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "tcp://127.0.0.1:%d" % port


def test_backoff_doubles_up_to_the_cap_and_a_success_resets_it(listener):
    results = [1, 1, 1, 1, 0, 1, 0]
    used = []
    logs = []

    def backup(url):
        used.append(url)
        return results[len(used) - 1]

    sch = run.schedule([listener], 0.01, 0, 1, 0.4, count=2, log=logs.append)
    sch[run._BACKOFF] = 0.1
    assert serve(sch, backup) == 0
    waits = [ln.split("trying again in ")[1].split(" s")[0] for ln in logs if "trying again" in ln]
    assert waits == ["0.1", "0.2", "0.4", "0.4", "0.1"], logs
    assert len(used) == 7


def test_no_link_answering_backs_off_too():
    logs = []

    def log(s):
        logs.append(s)
        if "trying again" in s and len([x for x in logs if "trying again" in x]) == 4:
            raise KeyboardInterrupt

    sch = run.schedule([closed_port()], 1, 0, 1, 0.4, count=1, log=log)
    sch[run._BACKOFF] = 0.1
    seen = []
    n = [0]

    def backup(url):
        n[0] += 1
        return 0

    # no link answers: the failures are the loop's own, each with the next backoff
    # a stop (here raised by the log) ends the loop as a signal does: status 0, one line
    assert serve(sch, backup) == 0
    assert [ln for ln in logs if "stopped" in ln] == [
        "stopped (SIGINT); the state is consistent and the next run resumes"]
    seen = [ln for ln in logs if "trying again" in ln]
    assert [ln.split("trying again in ")[1].split(" (")[0] for ln in seen] == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"]
    assert n[0] == 0
    assert any("no link answers" in ln for ln in logs)


def test_a_setting_to_fix_stops_the_loop(listener):
    sch = run.schedule([listener], 1, 0, 1, 1)
    assert serve(sch, lambda url: 2) == 2


def test_the_cheapest_answering_link_is_used_and_a_cheaper_one_is_probed(listener):
    dead = closed_port()
    # the slot 2 s away bounds the test; the probes every 0.05 s find the link before it
    sch = run.schedule([listener + "?cost=5", dead + "?cost=1"], 2, 0, 0.05, 2, count=2)
    used = []
    logs = []
    srv = []

    def backup(url):
        used.append(url)
        if len(used) == 1:
            # the cheap link comes up after the first backup
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(dead.rsplit(":", 1)[1])))
            s.listen(4)
            srv.append(s)
        return 0

    sch[run._LOG] = logs.append
    try:
        assert serve(sch, backup) == 0
    finally:
        for s in srv:
            s.close()
    assert used == [listener + "?cost=5", dead + "?cost=1"]
    assert any("a cheaper link answers (%s?cost=1)" % dead in ln for ln in logs)


def cfg(**over):
    c = {"device": "hand-1", "links": ["tcp://192.168.1.2:7440"], "state": "/state",
         "root": "/data", "every": "6h", "jitter": "10%",
         "wifi": {"ssid": "home", "password": "secret"},
         "uart": {"id": 1, "tx": 17, "rx": 16, "baud": 115200},
         "ble": {"name": "anchor"}}
    c.update(over)
    return c


def test_the_documented_config_is_taken():
    opts, root, sch = boot.check(cfg())
    assert opts["device"] == "hand-1" and opts["links"] == ["tcp://192.168.1.2:7440"]
    assert root == "/data" and sch[run._EVERY] == 21600 and sch[run._JITTER] == 2160
    opts, _, _ = boot.check(cfg(links=["ble:?cost=2", "serial:uart1:115200?cost=3"]))
    assert opts["links"] == ["ble:anchor?cost=2", "serial:uart1:115200?cost=3"]
    opts, _, _ = boot.check(cfg(links=["mqtts://broker.lan:8883"],
                                mqtt={"user": "hand-1", "password": "secret", "ca": "/ca.pem"}))
    assert opts["links"] == ["mqtts://broker.lan:8883"]


@pytest.mark.parametrize("over,msg", [
    ({"every": "often"}, 'rover.json: "every" must be a duration like 6h, got "often"'),
    ({"links": ["ble:other"]}, 'rover.json: "ble" has name "anchor", but the link ble:other names "other"'),
    ({"uart": {"id": 1, "baud": 115200, "tx": -1}}, 'rover.json: "uart.tx" must be a non-negative'),
    ({"uart": {"id": True, "baud": 115200}}, 'rover.json: "uart.id" must be a non-negative'),
    ({"wifi": {"ssid": "", "password": "x"}}, 'rover.json: "wifi.ssid" must be a non-empty string'),
    ({"jitter": "2d"}, 'rover.json: "jitter" must not be longer than the period'),
    ({"links": [5]}, 'rover.json: "links" must be a list of link addresses'),
    ({"mqtt": {"user": "hand-1"}}, 'rover.json: "mqtt" is set, but no link is mqtt:// or mqtts://'),
    ({"links": ["mqtt://b:1883"], "mqtt": {"ca": "/ca.pem"}}, 'rover.json: "mqtt.ca" is for mqtts:// links'),
    ({"links": ["mqtts://b:8883"], "mqtt": {"pass": "x"}}, 'rover.json: "mqtt.pass" is not a setting'),
    ({"links": ["mqtts://b:8883"], "mqtt": {"user": ""}}, 'rover.json: "mqtt.user" must be a non-empty string'),
])
def test_bad_configs_name_the_key(over, msg):
    with pytest.raises(boot.ConfigError) as e:
        boot.check(cfg(**over))
    assert str(e.value).startswith(msg), str(e.value)

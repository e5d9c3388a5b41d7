# Link addresses (anchor_core/linkurl.py). Plain functions: runs under pytest (CPython) and under
# tests/core/mpy_runner.py (MicroPython), so no pytest, no CPython-only code.
from anchor_core import linkurl


def refused(fn, url, words, *args):
    try:
        fn(url, *args)
    except ValueError as e:
        if words not in str(e):
            raise AssertionError("%r: %r does not say %r" % (url, str(e), words))
        if url not in str(e):
            raise AssertionError("%r: %r does not name the address" % (url, str(e)))
        return
    raise AssertionError("%r was taken" % url)


def test_scheme():
    assert linkurl.scheme("tcp://h:1") == "tcp"
    assert linkurl.scheme("mqtt://h:1") == "mqtt"
    assert linkurl.scheme("serial:/dev/ttyS0") == "serial"
    assert linkurl.scheme("ble:") == "ble"
    assert linkurl.scheme("unix:/run/a.sock") == "unix"
    for url in ("radio://x", "tcp:h:1", "mqtt:/h:1", "/dev/ttyS0", "", None, b"tcp://h:1"):
        assert linkurl.scheme(url) is None, url


def test_tcp():
    assert linkurl.host_port("tcp://127.0.0.1:7420") == ("127.0.0.1", 7420, {})
    assert linkurl.host_port("tcp://[::1]:1?cost=3") == ("::1", 1, {"cost": 3})
    assert linkurl.host_port("tcp://h:65535") == ("h", 65535, {})
    refused(linkurl.host_port, "tcp://h", "expected tcp://HOST:PORT")
    refused(linkurl.host_port, "tcp://:1", "expected tcp://HOST:PORT")
    refused(linkurl.host_port, "mqtt://h:1", "expected tcp://HOST:PORT")
    refused(linkurl.host_port, "tcp://h:1/x", "expected tcp://HOST:PORT")
    refused(linkurl.host_port, "tcp://u@h:1", "no user name or path")
    refused(linkurl.host_port, "tcp://h:1?mtu=5", "unknown option 'mtu'")


def test_one_port_check():
    refused(linkurl.host_port, "tcp://h:0", "port 0 is not in 1..65535")
    refused(linkurl.host_port, "tcp://h:65536", "port 65536 is not in 1..65535")
    refused(linkurl.host_port, "mqtt://h:0", "port 0 is not in 1..65535", "mqtt")
    # A listener may ask for any free port; nothing above 65535 either way.
    assert linkurl.host_port("tcp://0.0.0.0:0", "tcp", True) == ("0.0.0.0", 0, {})
    refused(linkurl.host_port, "tcp://h:70000", "port 70000 is not in 0 (a free one)..65535", "tcp", True)
    refused(linkurl.port_number, "x1", "port x1 is not in 1..65535", "url x1")


def test_mqtt():
    assert linkurl.host_port("mqtt://broker.lan:8883?mtu=512&cost=2", "mqtt") == \
        ("broker.lan", 8883, {"mtu": 512, "cost": 2})
    refused(linkurl.host_port, "mqtt://h:1883?qos=2", "unknown option 'qos'", "mqtt")
    refused(linkurl.host_port, "mqtt://h:1883?mtu", "is not key=value", "mqtt")
    refused(linkurl.host_port, "mqtt://h:1883?mtu=big", "not a non-negative integer", "mqtt")
    refused(linkurl.host_port, "mqtt://h:1883?mtu=1&mtu=2", "given twice", "mqtt")
    refused(linkurl.host_port, "tcp://h:1883", "expected mqtt://HOST:PORT", "mqtt")


def test_serial():
    assert linkurl.serial("serial:/dev/ttyUSB0") == ("/dev/ttyUSB0", 115200, {})
    assert linkurl.serial("serial:uart1:921600?rxbuf=4096&mtu=256&cost=3") == \
        ("uart1", 921600, {"rxbuf": 4096, "mtu": 256, "cost": 3})
    # Only a numeric tail is a baud: by-path names hold ':' themselves.
    assert linkurl.serial("serial:/dev/serial/by-path/pci-0:1.0-port0:57600") == \
        ("/dev/serial/by-path/pci-0:1.0-port0", 57600, {})
    assert linkurl.serial("serial:/dev/serial/by-path/pci-0:1.0-port0") == \
        ("/dev/serial/by-path/pci-0:1.0-port0", 115200, {})
    refused(linkurl.serial, "serial:", "no device")
    refused(linkurl.serial, "serial::9600", "no device")
    refused(linkurl.serial, "serial:/dev/ttyS0:0", "baud must be positive")
    refused(linkurl.serial, "serial:/dev/ttyS0?mtu=0", "mtu must be 1..65535")
    refused(linkurl.serial, "serial:/dev/ttyS0?rxbuf=0", "rxbuf must be positive")
    refused(linkurl.serial, "serial:/dev/ttyS0?speed=3", "unknown option 'speed'")
    refused(linkurl.serial, "tcp://h:1", "expected serial:")


def test_ble_and_unix():
    assert linkurl.ble("ble:field-unit?cost=4") == ("field-unit", {"cost": 4})
    assert linkurl.ble("ble:") == ("", {})
    refused(linkurl.ble, "ble:x?mtu=1", "unknown option 'mtu'")
    assert linkurl.unix("unix:/run/anchor/mgmt.sock") == "/run/anchor/mgmt.sock"
    assert linkurl.unix("unix:./a?b") == "./a?b"
    refused(linkurl.unix, "unix:", "expected unix:PATH")
    refused(linkurl.unix, "/run/x.sock", "expected unix:PATH")


def test_anchor_address_forms():
    # What anchor serve takes: a listener's free port, the broker's, a serial spec.
    assert linkurl.host_port("tcp://[::1]:0", "tcp", True, "listen") == ("::1", 0, {})
    refused(linkurl.host_port, "mqtt://h:99999", "broker mqtt://h:99999: port 99999", "mqtt", False, "broker")
    assert linkurl.serial("serial:/dev/ttyUSB0:9600", "serial") == ("/dev/ttyUSB0", 9600, {})
    refused(linkurl.host_port, "mqtt://h:1?mtu=65537", "mtu must be 1..65536", "mqtt")


def test_cost():
    assert linkurl.cost("tcp://127.0.0.1:1") == 1
    assert linkurl.cost("serial:/dev/ttyUSB0:9600?rxbuf=256&cost=5") == 5
    assert linkurl.cost("ble:x?cost=0") == 0
    refused(linkurl.cost, "mqtt://h:1?cost=cheap", "not a non-negative integer")
    refused(linkurl.cost, "radio://x", "expected tcp://HOST:PORT, serial:")
    refused(linkurl.cost, "unix:/a", "expected tcp://HOST:PORT")

"""Link URLs the rover takes, and the clear errors for the ones it cannot use."""
import pytest

from rover.link import LinkError, cost, open_link


def test_unknown_scheme_names_the_forms():
    with pytest.raises(LinkError) as e:
        open_link("radio://x")
    assert "tcp://HOST:PORT" in str(e.value) and "serial:" in str(e.value) and "mqtt://" in str(e.value)


def test_ble_needs_a_board():
    with pytest.raises(LinkError) as e:
        open_link("ble:field-unit")
    assert "aioble" in str(e.value)


def test_cost_option():
    assert cost("tcp://127.0.0.1:1") == 1
    assert cost("serial:/dev/ttyUSB0:9600?rxbuf=256&cost=5") == 5
    with pytest.raises(LinkError):
        cost("mqtt://h:1?cost=cheap")


def test_serial_device_missing_is_clear(tmp_path):
    with pytest.raises(LinkError) as e:
        open_link("serial:%s/none:115200" % tmp_path)
    assert "none" in str(e.value)


def test_mqtt_broker_down_is_clear():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(LinkError) as e:
        open_link("mqtt://127.0.0.1:%d" % port, "rover-1")
    assert "broker" in str(e.value)


def test_tcp_port_range_is_checked():
    for url in ("tcp://127.0.0.1:0", "tcp://127.0.0.1:65536"):
        with pytest.raises(LinkError) as e:
            open_link(url)
        assert "is not in 1..65535" in str(e.value)


def test_micropython_drops_the_grammar_after_use():
    """On MicroPython the address grammar is unloaded once an address is parsed, so its
    bytecode is not in the rover's heap through a backup; it loads again when needed."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mpy = os.path.join(os.path.dirname(sys.executable), "micropython")
    if not os.path.exists(mpy):
        pytest.skip("no MicroPython in the venv")
    code = ("import sys\nsys.path.insert(0, %r)\nimport anchor_core\nfrom rover import link\n"
            "print(link.cost('serial:/dev/x?cost=3'), 'anchor_core.linkurl' in sys.modules, hasattr(anchor_core, 'linkurl'))\n"
            "try:\n    link.open_link('radio://x')\nexcept link.LinkError as e:\n    print('refused', 'serial:' in str(e))\n"
            "print(link.cost('tcp://h:1'), 'anchor_core.linkurl' in sys.modules)\n" % os.path.join(root, "firmware"))
    out = subprocess.run([mpy, "-X", "heapsize=256K", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:3] == ["3 False False", "refused True", "1 False"], out.stdout + out.stderr

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

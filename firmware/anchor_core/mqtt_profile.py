# The MQTT link profile: what the rover's and the anchor's MQTT ports agree on (docs/links.md,
# protocol.md §7). Each channel packet is one broker message, QoS 1 both ways, on per-device
# topics: the rover publishes to anchor/v1/<device>/up, the anchor to anchor/v1/<device>/down.
# QoS 1 may deliver a message twice; the channel numbers its packets and drops duplicates.
from anchor_core.compat import const

QOS = const(1)
# Largest packet by default: 1 KiB is a size cellular links and hosted brokers take without
# fragmenting or refusing. A packet is held whole in RAM on both sides, hence the bound.
MTU = const(1024)
MAX_MTU = const(65536)
KEEPALIVE = const(60)        # seconds; the broker drops a client silent for 1.5x this
PUBACK = const(4)            # bytes of the acknowledgement each QoS 1 message costs
UP_FILTER = "anchor/v1/+/up"  # what the anchor subscribes to: every rover's uplink


def topic(device, direction):
    """direction: "up" (rover to anchor) or "down"."""
    return "anchor/v1/%s/%s" % (device, direction)


def device_of(name, direction="up"):
    """The device id in a topic of this profile, or None if the topic is not one."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "anchor" or parts[1] != "v1" or parts[3] != direction:
        return None
    return parts[2]


def publish_size(topic_len, n):
    """Bytes of a QoS 1 PUBLISH carrying n payload bytes: fixed header, remaining length
    (1..4 bytes), topic length and name, packet id."""
    body = 2 + topic_len + 2 + n
    size = 2 + body
    while body > 127:
        body >>= 7
        size += 1
    return size

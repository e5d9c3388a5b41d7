# The rover's BLE GATT profile, shared by the rover (aioble, MicroPython) and the anchor
# (bleak/bumble, CPython). Described in hw/gatt.md; the UUIDs were generated once at random
# and must never change, or deployed rovers and anchors stop finding each other.
from binascii import unhexlify

from anchor_core.compat import const

# One primary service with two characteristics.
SERVICE_UUID = "37da5c1f-6c3e-4595-8b42-3ef64afbe35a"
# RX: the anchor (central) writes packets here with Write Without Response.
RX_UUID = "6ccd79fc-1e40-4aa1-a07e-cb0eb16099f3"
# TX: the rover (peripheral) sends packets here as notifications.
TX_UUID = "504d22be-d997-4703-9b35-46763f2ba8f2"

# Complete local name in the scan response: prefix + the rover's id. The legacy scan
# response holds 31 bytes; aioble packs fields while their total stays under 31, so the
# name field (2 header bytes + name) may have at most 28 bytes.
NAME_PREFIX = "anchor-rover-"
NAME_MAX = const(28)

# ATT MTU both ends ask for: 247 is what fits one LE data-length-extended link-layer PDU
# (251 bytes = 4 L2CAP + 247 ATT), so a packet never needs link-layer fragmentation.
ATT_MTU = const(247)
ATT_MTU_MIN = const(23)          # every LE link starts with (and may stay at) this
ATT_HEADER = const(3)            # opcode + attribute handle, in every write and notification
L2CAP_HEADER = const(4)          # length + channel id
MAX_PACKET = const(244)          # ATT_MTU - ATT_HEADER: the RX characteristic's buffer size


def packet_size(att_mtu):
    """Largest packet that fits one write command or notification at this ATT MTU."""
    return att_mtu - ATT_HEADER


def uuid_bytes(uuid_str):
    """16 bytes of a 128-bit UUID in the little-endian order used on the air (advertising
    data, ATT PDUs), as bluetooth.UUID and bumble's UUID lay them out."""
    b = unhexlify(uuid_str.replace("-", ""))
    if len(b) != 16:
        raise ValueError("not a 128-bit UUID: %s" % uuid_str)
    return bytes(reversed(b))


def adv_name(rover_id):
    """The advertised name for a rover id; raises ValueError if it would not fit."""
    name = NAME_PREFIX + rover_id
    if len(name) > NAME_MAX:
        raise ValueError("rover id %r makes the BLE name longer than %d bytes"
                         % (rover_id, NAME_MAX))
    return name

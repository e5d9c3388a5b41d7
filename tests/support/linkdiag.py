"""What every channel and port in this process holds, as text: for the message of a link
test that stalls, so a rare stall says at once which end stopped and why.

Found through the garbage collector because the ends live inside registries and listeners
that do not hand them out (the anchor's ChannelConnection is made per port by serve_port).
"""
import gc

from anchor_core import channel as chan

_CHANNEL = ("state", "conn_id", "snd_nxt", "snd_una", "inflight_bytes", "resend", "resend_end",
            "peer_wnd", "cwnd", "rto", "rto_at", "dupacks", "last_progress", "rcv_nxt", "ack_due",
            "_wnd_sent", "recovering", "ghost", "ghost_until", "_probe_at", "retransmits",
            "timeouts", "dropped", "resets")


def _scalars(obj):
    return {k: v for k, v in vars(obj).items()
            if not k.startswith("__") and isinstance(v, (int, float, bool, str, type(None)))}


def describe_channel(ch, now):
    role = "rover" if ch.initiator else "anchor"
    fields = " ".join("%s=%r" % (f, getattr(ch, f, None)) for f in _CHANNEL)
    lines = ["%s channel (now=%d): %s in_flight=%d" % (role, now, fields, ch.fl.count)]
    for sid, s in sorted(ch.streams.items()):
        lines.append("  stream %d: tx=%d sent=%d rx=%d eof=%r fin_wanted=%r fin_sent=%r more=%r"
                     % (sid, s.tx.count, s.tx_sent, s.rx.count, s.eof, s.fin_wanted, s.fin_sent,
                        getattr(s, "more", None)))
    return lines


def describe_all(now):
    """Every Channel, and every object with a port's counters (tx, rx, dropped), in this
    process."""
    lines = []
    for o in gc.get_objects():
        try:
            if isinstance(o, chan.Channel):
                lines += describe_channel(o, now)
            elif hasattr(o, "dropped") and hasattr(o, "mtu") and hasattr(o, "tx") and not isinstance(o, type):
                lines.append("%s: %r" % (type(o).__name__, _scalars(o)))
        except Exception as e:     # an object half torn down: say so, go on
            lines.append("%s: %r" % (type(o).__name__, e))
    return "\n".join(lines)

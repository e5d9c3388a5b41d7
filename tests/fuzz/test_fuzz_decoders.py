"""Fuzzing what takes bytes from the wire: frames, CBOR, messages, the session machine and the
radio channel (hypothesis, CPython).

Each property has a small, explicit max_examples so the file stays a short part of `make test`
(derandomized, no example database: every run tries the same inputs). tools/bench-fuzz runs
the same targets (tests/support/fuzz_targets.py) for millions of inputs. What each target
checks is in the docstrings of fuzz_targets.check_* / run_*.
"""

import pytest

pytest.importorskip("hypothesis")  # requirements-dev.txt

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

from tests.support import fuzz_targets as ft  # noqa: E402

from anchor_core import cbor  # noqa: E402
from anchor_core import framing  # noqa: E402
from anchor_core import states as st  # noqa: E402


def fuzz(n, shrink=True):
    # shrink=False for the long stateful runs: shrinking dozens of steps drawn from one
    # random source takes minutes and gains little; the failure shows its step anyway.
    phases = tuple(Phase) if shrink else tuple(p for p in Phase if p != Phase.shrink)
    return settings(deadline=None, max_examples=n, derandomize=True, database=None, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


randoms = hs.randoms(use_true_random=False)


# --- framing --------------------------------------------------------------------------

@fuzz(150)
@given(data=hs.binary(max_size=1500), cuts=hs.lists(hs.integers(1, 400), max_size=12),
       mp=hs.sampled_from((0, 1, 7, 64, 300, 1024)), tight=hs.booleans(),
       views=hs.booleans(), eof=hs.booleans())
def test_deframer_arbitrary_bytes_in_arbitrary_pieces(data, cuts, mp, tight, views, eof):
    ft.check_deframer(ft.DeframerCase.of(data, cuts, mp, mp + 10 if tight else None, views, eof))


def _no_sync(b):
    b = bytearray(b)
    for i in range(len(b) - 1):
        if b[i] == 0xA7 and b[i + 1] == 0x5C:
            b[i + 1] = 0x5D
    return bytes(b)


# Noise rich in both SYNC bytes, but never the pair.
clean_noise = hs.lists(hs.one_of(hs.binary(max_size=60), hs.sampled_from((b"\xa7", b"\x5c", b"\xa7\xa7", b"\x5c\xa7"))),
                       max_size=4).map(b"".join).map(_no_sync)


@fuzz(150)
@given(payloads=hs.lists(hs.binary(max_size=300), max_size=6), noise=hs.lists(clean_noise, min_size=7, max_size=7),
       cuts=hs.lists(hs.integers(1, 200), max_size=12), tight=hs.booleans(), views=hs.booleans(),
       eof=hs.booleans())
def test_deframer_recovers_every_frame_from_clean_noise(payloads, noise, cuts, tight, views, eof):
    mp = 300
    parts = [noise[0]]
    for p, g in zip(payloads, noise[1:]):
        parts += [framing.encode_frame(p, mp), g]
    case = ft.DeframerCase.of(b"".join(parts), cuts, mp, mp + 10 if tight else None, views, eof)
    case.clean, case.payloads = True, payloads
    case.garbage = sum(len(parts[i]) for i in range(0, len(parts), 2))
    ft.check_deframer(case)


@fuzz(250)
@given(rnd=randoms)
def test_deframer_recovers_frames_from_any_noise(rnd):
    ft.check_deframer(ft.DeframerCase(rnd))


# --- CBOR -----------------------------------------------------------------------------

@fuzz(300)
@given(data=hs.binary(max_size=200), views=hs.sampled_from((0, 1, 4)))
def test_cbor_decode_arbitrary_bytes(data, views):
    ft.check_cbor_decode(data, views, pad=2)


@fuzz(400)
@given(rnd=randoms, views=hs.sampled_from((0, 1, 4, 33)))
def test_cbor_decode_mutated_encodings(rnd, views):
    ft.check_cbor_decode(ft.gen_cbor_input(rnd), views, pad=3)


keys = hs.one_of(hs.integers(-(1 << 64), (1 << 64) - 1), hs.text(max_size=8), hs.binary(max_size=8))
leaves = hs.one_of(hs.none(), hs.booleans(), hs.integers(-(1 << 64), (1 << 64) - 1),
                   hs.sampled_from(ft.INT_EDGES), hs.binary(max_size=300), hs.text(max_size=40))
values = hs.recursive(leaves, lambda inner: hs.one_of(hs.lists(inner, max_size=6),
                                                      hs.dictionaries(keys, inner, max_size=6)),
                      max_leaves=40)


@fuzz(300)
@given(obj=values)
def test_cbor_round_trip(obj):
    ft.check_cbor_roundtrip(obj)


@fuzz(30)
@given(rnd=randoms, n=hs.integers(1, cbor.MAX_DEPTH + 2))
def test_cbor_round_trip_deep(rnd, n):
    ft.check_cbor_roundtrip(ft.gen_deep(rnd, n))


@fuzz(300)
@given(data=hs.binary(max_size=12) | hs.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")),
       pad=hs.integers(0, 2))
def test_micropython_utf8_validator_agrees_with_cpython(data, pad):
    ft.check_utf8_validator(data, pad)


@fuzz(200)
@given(rnd=randoms, pad=hs.integers(0, 2))
def test_micropython_utf8_validator_on_edited_text(rnd, pad):
    ft.check_utf8_validator(ft.gen_utf8_input(rnd), pad)


# --- messages -------------------------------------------------------------------------

@fuzz(300)
@given(data=hs.binary(max_size=200), views=hs.sampled_from((0, 1)))
def test_messages_decode_arbitrary_bytes(data, views):
    ft.check_message_decode(data, False, views)


@fuzz(400)
@given(rnd=randoms, views=hs.sampled_from((0, 1)))
def test_messages_decode_mutated_messages(rnd, views):
    data, valid = ft.gen_message_input(rnd)
    ft.check_message_decode(data, valid and not views, views)


@fuzz(200)
@given(rnd=randoms)
def test_valid_messages_of_every_type_decode(rnd):
    msg = ft.gen_message(rnd)
    ft.check_message_decode(cbor.encode(msg), True)


# --- session --------------------------------------------------------------------------

@fuzz(80, shrink=False)
@given(rnd=randoms, role=hs.sampled_from((st.ROVER, st.ANCHOR)),
       config=hs.sampled_from(ft.SESSION_CONFIGS))
def test_session_takes_anything_and_raises_only_protocol_error(rnd, role, config):
    ft.run_session(rnd, 30, role, config)


# --- channel --------------------------------------------------------------------------

@fuzz(60, shrink=False)
@given(rnd=randoms)
def test_channel_survives_random_and_forged_packets(rnd):
    ft.run_channel(rnd, 100)


# --- the benchmark's loop, briefly ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ft.TARGETS))
def test_bench_loop_finds_nothing(name):
    cases = {"session": 40, "channel": 30, "deframer": 300}.get(name, 1500)
    got = ft.fuzz_loop(name, cases, seed=1)
    assert not got["crashes"] and not got["escaped"], got["crashes"]
    assert set(got["exceptions"]) <= ft.ALLOWED[name], got["exceptions"]

"""The relay's hand-over from an origin worker thread to the session's event loop: every item
arrives exactly once and in order, however long the loop is busy elsewhere.

A busy anchor's loop can stand still for a second or more: the machine is loaded, or other
sessions do synchronous work (chunking a capture, ingesting a backup). The feed used to give
up on a hand-over after 1 s and submit the item again, and the first submission then still
landed: a relayed body came out 16 KiB too long, or a second response head reached the fetch
as if it were a failure (m.fail(200, size): 'int' object is not subscriptable)."""
import asyncio
import threading

import pytest

from anchor.services.relay import QUEUE_DEPTH, _Feed

WAIT = 30.0        # a bound for a hang only; nothing here waits on the clock to proceed


def _count_handovers(loop):
    """Counts what other threads schedule on the loop (the only way a worker reaches it)."""
    cond = threading.Condition()
    handed = [0]
    real = loop.call_soon_threadsafe

    def counting(*args, **kw):
        with cond:
            handed[0] += 1
            cond.notify_all()
        return real(*args, **kw)
    loop.call_soon_threadsafe = counting
    return cond, handed


async def _drain(feed):
    items = []
    while not items or items[-1][0] != "end":
        items.append(await asyncio.wait_for(feed.get(), WAIT))
    return items


def test_an_item_handed_over_while_the_loop_is_busy_arrives_once():
    async def main():
        loop = asyncio.get_running_loop()
        feed = _Feed(loop)
        cond, handed = _count_handovers(loop)
        returned = []

        def worker():
            feed.put(("head", 200, 5, None, None, None))
            with cond:
                returned.append(True)
                cond.notify_all()
            feed.put(("data", b"hello"))
            feed.put(("end",))

        threading.Thread(target=worker, daemon=True).start()
        # Hold the loop, as another session's synchronous work does, until the worker has
        # either finished its hand-over or tried it a second time.
        with cond:
            assert cond.wait_for(lambda: returned or handed[0] >= 2, WAIT)
        return await _drain(feed)

    items = asyncio.run(main())
    assert items == [("head", 200, 5, None, None, None), ("data", b"hello"), ("end",)]


def test_a_slow_consumer_holds_the_worker_back_and_loses_nothing():
    async def main():
        loop = asyncio.get_running_loop()
        feed = _Feed(loop)
        n = QUEUE_DEPTH * 4

        def worker():
            for i in range(n):
                feed.put(("data", b"%d" % i))
            feed.put(("end",))

        threading.Thread(target=worker, daemon=True).start()
        return await _drain(feed)

    items = asyncio.run(main())
    assert items == [("data", b"%d" % i) for i in range(QUEUE_DEPTH * 4)] + [("end",)]


def test_a_cancelled_feed_releases_its_worker():
    async def main():
        feed = _Feed(asyncio.get_running_loop())
        gave_up = threading.Event()
        results = []

        def worker():
            while True:
                ok = feed.put(("data", b"x"))
                results.append(ok)
                if not ok:
                    break
            gave_up.set()

        threading.Thread(target=worker, daemon=True).start()
        await asyncio.wait_for(feed.get(), WAIT)      # the worker is running and will fill the queue
        feed.cancel.set()
        assert await asyncio.get_running_loop().run_in_executor(None, gave_up.wait, WAIT)
        return results

    results = asyncio.run(main())
    assert results[-1] is False and all(results[:-1])


def test_a_resume_field_is_checked_and_a_range_must_be_the_rest():
    from anchor.services.relay import _range_total, _resume
    from anchor_core import messages as m
    url = "http://o/x"
    assert _resume(m.fetch(url)) is None
    assert _resume(m.fetch(url, None, [5, '"e"'])) == (5, '"e"')
    for bad in ([0, '"e"'], [-1, '"e"'], [1 << 41, '"e"'], [5, ""], [5, "x" * 513], [5], "5", [5, 7],
                [True, '"e"'][:1], [5.0, '"e"']):
        with pytest.raises(m.ProtocolError):
            _resume([m.FETCH, url, [], bad])
    assert _range_total("bytes 100-999/1000", 100) == 1000
    for bad in ("bytes 0-999/1000", "bytes 100-998/1000", "bytes 100-999/*", "items 100-999/1000", None, "",
                "bytes x-y/z"):
        assert _range_total(bad, 100) is None, bad

"""The watch list: data a rover's backup needs, which the anchor expects to pass through
its relay soon (the file waits in the rover's outbox), so it waits instead of asking the
radio for it. One list per anchor (anchor.app makes it), in memory: a watch lives only as
long as the backup session that waits on it."""
import time


class WatchList:
    def __init__(self):
        self.items = {}          # (dev, oid) -> {"device", "path", "size", "deadline"}
        self.listeners = set()   # asyncio.Events of sessions waiting on a watch

    def add(self, dev, device, oid, path, size, seconds):
        self.items[(dev, oid)] = {"device": device, "path": path, "size": size,
                                  "object": oid.hex(), "deadline": time.time() + seconds}

    def remove(self, dev, oid):
        self.items.pop((dev, oid), None)

    def deadline_in(self, dev, oid):
        """Seconds until the watch's deadline (0 if it is not watched any more)."""
        w = self.items.get((dev, oid))
        return max(0.0, w["deadline"] - time.time()) if w else 0.0

    def expire(self, dev, oid):
        """Give up on a watch now (its regeneration failed): wake the waiting session."""
        w = self.items.get((dev, oid))
        if w is not None:
            w["deadline"] = time.time()
            for ev in list(self.listeners):
                ev.set()

    def captured(self, dev, oid):
        """A relayed body became an object of `dev`: wake the sessions that wait."""
        if (dev, oid) in self.items:
            for ev in list(self.listeners):
                ev.set()

    def listing(self):
        now = time.time()
        return sorted((dict(w, seconds_left=round(w["deadline"] - now, 1)) for w in self.items.values()),
                      key=lambda w: (w["device"], w["path"]))


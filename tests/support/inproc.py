"""An anchor in this process (its asyncio loop on a thread), so link tests can drive the
rover's blocking code from the test thread and the anchor's asyncio code at once."""
import asyncio
import os
import threading

from anchor.app import App
from anchor.links.chanlink import serve_port


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self):
        async def _cancel_all():
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
        try:
            self.call(_cancel_all(), 10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class InprocAnchor:
    """An anchor (anchor.app.App) over `data_dir` whose sessions run on `lt` (a LoopThread);
    `anchor` is what serves its links (the App's SessionServer)."""

    def __init__(self, data_dir, lt=None):
        self.lt = lt or LoopThread()
        os.makedirs(data_dir, exist_ok=True)
        self.app = self.lt.call(self._open(data_dir))
        self.anchor = self.app.sessions
        self.served = []

    async def _open(self, data_dir):
        return App(data_dir, open=True)

    def start_mgmt(self, path):
        """The management API on a unix socket; returns the address anchorctl takes."""
        from anchor.api import mgmt
        self.mgmt_server = self.lt.call(mgmt.start(self.app, path))
        return "unix:" + path

    def serve(self, port, **options):
        """Serve a packet port (the anchor end of a link) until it is gone."""
        fut = self.lt.spawn(serve_port(self.anchor, port, **options))
        self.served.append(fut)
        return fut

    async def _serve_tcp(self):
        server = await asyncio.start_server(self.anchor.serve_stream, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    def serve_tcp(self):
        self.tcp_server, port = self.lt.call(self._serve_tcp())
        return port

    def close(self):
        for f in self.served:
            f.cancel()
        if getattr(self, "mgmt_server", None):
            self.lt.loop.call_soon_threadsafe(self.mgmt_server.close)
        if getattr(self, "tcp_server", None):
            self.lt.loop.call_soon_threadsafe(self.tcp_server.close)
        self.lt.call(self._close())
        self.lt.close()

    async def _close(self):
        self.app.close()

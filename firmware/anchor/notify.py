"""systemd's service notification protocol, sd_notify(3) (CPython only).

A datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
name written with a leading '@'). Not a library: the protocol is one sendto() of "KEY=VALUE"
lines, and the daemon must send WATCHDOG=1 from its own event loop (a thread would go on
pinging while the loop hangs, which is exactly what the watchdog is there to catch).
Without $NOTIFY_SOCKET (run by hand, `make run`) every call does nothing.
"""
import logging
import os
import socket

log = logging.getLogger("anchor")


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.address = None
        path = env.get("NOTIFY_SOCKET")
        if path:
            self.address = "\0" + path[1:] if path.startswith("@") else path
        self.sock = None
        # The watchdog is ours only if no other process is named as its owner.
        self.watchdog_s = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_s = int(usec) / 1e6
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number of microseconds: no watchdog pings", usec)
            else:
                if self.watchdog_s <= 0:
                    self.watchdog_s = None
        self.failed = False

    @property
    def active(self):
        return self.address is not None

    def send(self, *lines):
        """Sends one message of KEY=VALUE lines; a notification that cannot be sent is logged
        once (the service manager may be restarting) and never stops the anchor."""
        if self.address is None:
            return False
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
            self.failed = False
            return True
        except OSError as e:
            if not self.failed:
                log.warning("could not notify the service manager at %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
            self.failed = True
            return False

    def status(self, text):
        # One line: a newline would start another KEY=VALUE assignment.
        return self.send("STATUS=" + " ".join(str(text).split()))

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

# One session with the anchor over a link: the rover's half of the sans-I/O core, plus
# the buffers it reuses. Backups and relay requests are both conversations.
from anchor_core import framing
from anchor_core import messages as m
from anchor_core import states
from anchor_core.session import Session
from rover import buffers
from rover.linkerror import LinkError

RX_PAYLOAD = buffers.RX_PAYLOAD   # small messages and BODY (4 KiB; 16 KiB on CPython)
RX_SMALL = buffers.RX_SMALL       # what a backup receives


class RoverError(Exception):
    def __init__(self, text, code=0):
        super().__init__(text)
        self.code = code          # the anchor's ERROR code, when it refused


class Conversation:
    def __init__(self, link, device, log=None, rx=RX_PAYLOAD):
        m.check_device(device)
        self.link = link
        self.device = device
        self.log = log or (lambda s: None)
        buffers.allocate()     # no-op when main.py already took them at start-up
        # main.py's receive buffers when it took them for this size of message (one
        # conversation at a time uses them), else fresh ones
        b = buffers.rx
        mine = b is not None and len(b) == rx + buffers.RX_OVERHEAD
        self.sess = Session(states.ROVER, rx, b if mine else rx + buffers.RX_OVERHEAD, buffers.tx, True)
        self.rx = rx
        self.rxbuf = buffers.rread if mine else bytearray(buffers.READ_SIZE)
        self.cbuf = buffers.chunk

    def send(self, msg):
        self.link.write(self.sess.send(msg))

    def send_blob(self, fields, body):
        head, tail = self.sess.send_blob(fields, body)
        self.link.write(head)
        self.link.write(body)
        self.link.write(tail)

    def send_compressed(self, fields, c, src, n, size):
        """A message whose last field is the zlib stream of src[:n] that compressor c planned
        (size bytes): its pieces go onto the link as the compressor makes them."""
        head, self._crc = self.sess.send_blob_open(fields, size)
        self.link.write(head)
        c.stream(src, n, self._piece)
        self.link.write(framing.frame_tail(self._crc))

    def _piece(self, mv):
        self._crc = framing.crc32(mv, self._crc)
        self.link.write(mv)

    def recv(self, *expected):
        """The next message from the anchor, which must be of one of the expected types.
        ERROR from the anchor is raised as RoverError."""
        while True:
            msg = self.sess.next_event()
            if msg is not None:
                if msg[m.MSG_TYPE] == m.ERROR:
                    raise RoverError("anchor refused: %s (error %d)" % (msg[m.ERROR_TEXT], msg[m.ERROR_CODE]),
                                     msg[m.ERROR_CODE])
                if msg[m.MSG_TYPE] not in expected:
                    raise RoverError("anchor sent %s, expected %s" % (
                        m.NAMES[msg[m.MSG_TYPE]], " or ".join(m.NAMES[t] for t in expected)))
                return msg
            n = self.link.readinto(self.rxbuf)
            if not n:
                # No ERROR first: the link broke (a radio gone, a cut); the backup resumes.
                raise LinkError("anchor closed the link")
            self.sess.receive_data(memoryview(self.rxbuf)[:n])

    def hello(self, parent, caps):
        self.send(m.hello(self.device, parent, caps))
        return self.recv(m.WELCOME)

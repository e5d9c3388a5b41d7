# MicroPython entry point: `micropython -X heapsize=256K firmware/rover/main.py ARGS...`
# (tools/rover-mpy does this). The firmware directory must be on sys.path.
import sys

from rover import buffers

# A restore takes other buffers; a backup that shows progress, or that may go over MQTT, a
# smaller compressor output (rover/buffers.py).
_a = sys.argv
_o = 0
for _l in _a:
    if "mqtt://" in _l or "mqtts://" in _l:
        _o = buffers.COMPRESSED_SHOWN
if "--json" in _a or ("-q" not in _a and "--quiet" not in _a and buffers.tty()):
    _o = buffers.COMPRESSED_SHOWN
buffers.allocate("restore" in _a, _o)
_a = _l = _o = None

from rover.cli import main  # noqa: E402  (after the buffers, on purpose)

sys.exit(main(sys.argv[1:]))

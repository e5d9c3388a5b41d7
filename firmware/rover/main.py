# MicroPython entry point: `micropython -X heapsize=256K firmware/rover/main.py ARGS...`
# (tools/rover-mpy does this). The firmware directory must be on sys.path.
import sys

from rover import buffers

# A restore takes other buffers; a backup that shows progress a smaller compressor output.
_a = sys.argv
buffers.allocate("restore" in _a, "--json" in _a or ("-q" not in _a and "--quiet" not in _a and buffers.tty()))
_a = None

from rover.cli import main  # noqa: E402  (after the buffers, on purpose)

sys.exit(main(sys.argv[1:]))

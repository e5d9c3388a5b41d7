# MicroPython entry point: `micropython -X heapsize=256K firmware/rover/main.py ARGS...`
# (tools/rover-mpy does this). The firmware directory must be on sys.path.
import sys

from rover import buffers

buffers.allocate("restore" in sys.argv)

from rover.cli import main  # noqa: E402  (after the buffers, on purpose)

sys.exit(main(sys.argv[1:]))

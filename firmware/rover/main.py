# MicroPython entry point: `micropython -X heapsize=256K firmware/rover/main.py ARGS...`
# (tools/rover-mpy does this). The firmware directory must be on sys.path.
import sys

from rover.cli import main

sys.exit(main(sys.argv[1:]))

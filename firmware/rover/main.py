# MicroPython entry point: `micropython -X heapsize=256K firmware/rover/main.py ARGS...`
# (tools/rover-mpy does this). The firmware directory must be on sys.path. This file is
# compiled at start-up (it is not precompiled): what it holds is heap, so it stays small.
import sys

try:
    from rover import buffers
    buffers.start(sys.argv)      # the buffers first, while the heap is in one piece
    from rover.cli import main
    _r = main(sys.argv[1:])
except MemoryError:
    # One line, like every other failure: a traceback says nothing to whoever runs a rover.
    print("rover: out of memory: this interpreter's heap is too small for the command "
          "(a paired backup needs about 256 KB; docs/rover.md, \"Memory\")", file=sys.stderr)
    _r = 1
sys.exit(_r)

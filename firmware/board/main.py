# A board's main.py: copied to the root of a MicroPython board's filesystem next to
# rover.json, with the firmware (rover/, anchor_core/) on its path. It backs the board up
# unattended from power-on: rover/boot.py reads rover.json, brings up the links and runs
# the same loop as `rover ... run` (docs/rover.md, "On a board: main.py and rover.json").
# On the unix port: `micropython -X heapsize=256K main.py` in the folder holding rover.json.
import sys

from rover import buffers

buffers.allocate()      # before anything else: the big buffers while the heap is whole

from rover import boot  # noqa: E402

_status = boot.start()
if _status and sys.platform == "linux":
    sys.exit(_status)   # the unix port: a status for whoever started it; a board goes to its REPL

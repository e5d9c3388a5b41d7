# A board's main.py: copied to the root of a MicroPython board's filesystem next to
# rover.json, with the firmware (rover/, anchor_core/) on its path. It backs the board up
# unattended from power-on: rover/boot.py reads rover.json, brings up the links and takes
# the state folder's lock, then the loop of `rover ... run` runs (rover/run_loop.py;
# docs/rover.md, "On a board: main.py and rover.json").
# On the unix port: `micropython -X heapsize=256K main.py` in the folder holding rover.json.
import sys

from rover import buffers

buffers.allocate()      # before anything else: the big buffers while the heap is whole

from anchor_core.compat import unload  # noqa: E402
import rover.backup  # noqa: E402,F401  (what every backup holds, first: rover/run_loop.py)
from rover import boot  # noqa: E402

_r = boot.prepare()
unload(boot)            # its checks are done: the heap is the backups'
boot = None
if type(_r) is not int:
    from rover.run_loop import loop
    _r = loop(*_r)
if _r and sys.platform == "linux":
    sys.exit(_r)        # the unix port: a status for whoever started it; a board goes to its REPL

# The loop of `rover ... run` and of a board's main.py: rover/run.py's steps, the backups
# between them. Apart from run.py so that run.py's code and asyncio can leave the heap for
# each backup (on MicroPython): held through a backup they took ~13 KB, and a paired MQTT
# backup has ~2 KB of a 256 KB heap to spare (tools/bench-rover-heap). What stays is this
# module and the run's state, a list (rover/run.py, _LOG...).
import sys
import time

from anchor_core.compat import MICROPYTHON


def log_line(s):
    print("rover: " + s)


def quiet(s):
    pass


def command(opts, rest):
    """`rover ... run ROOT --every D ...`: run.py reads the options and takes the lock."""
    # What every backup holds is loaded first: run.py's code, dropped before each backup,
    # then leaves its space at the top of the heap in one piece rather than in holes
    # between the backup's modules (in holes, a 256 KB heap had no 4.6 KB block left for
    # a session's buffer).
    import rover.backup  # noqa: F401
    from rover import run
    st = run.main(opts, rest)
    run = None
    return st if type(st) is int else loop(opts, rest[1], st)


def loop(opts, root, st):
    """Backups until run.step says the run is over; its exit status."""
    from rover.cli import _backup
    from anchor_core.compat import unload
    code = None
    while True:
        try:
            from rover import run
            code = run.step(st, code)      # the next link, or the run's exit status
            if type(code) is int:
                return code
            run = None
            if MICROPYTHON:
                for k in list(sys.modules):
                    if k == "rover.run" or k == "asyncio" or k.startswith("asyncio."):
                        unload(sys.modules[k])
            code = _backup(opts, root, st[0], time.time(), code, True)   # st[0]: its log
        except KeyboardInterrupt:
            code = -1        # run.step says it stopped and gives the lock back

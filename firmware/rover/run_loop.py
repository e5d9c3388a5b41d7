# The loop of `rover ... run` and of a board's main.py, kept apart from its own code
# (rover/run.py) so that code can leave the heap while a backup runs: on MicroPython the
# loop's code and asyncio take ~13 KB, and a paired MQTT backup has ~2 KB of a 256 KB heap
# to spare (tools/bench-rover-heap). What stays is this module and the Schedule object.
import sys
import time

from anchor_core.compat import MICROPYTHON


class Schedule:
    pass          # attributes: rover/run.py schedule()


def log(s):
    print("rover: " + s)


def quiet(s):
    pass


def command(opts, rest):
    """`rover ... run ROOT --every D ...`: rover/run.py reads the options, takes the lock."""
    from rover import run
    sch = run.main(opts, rest)
    run = None
    if type(sch) is int:
        return sch
    return loop(opts, rest[1], sch)


def loop(opts, root, sch):
    """Backups between the steps of rover/run.py's loop until it ends; the exit status.
    The caller holds the state folder's lock (run.begin); it is given back here."""
    from rover.cli import _backup
    from rover import run
    code = None
    try:
        while True:
            url = run.step(sch, code)
            if type(url) is int:
                return url
            if MICROPYTHON:
                run = None
                _drop()
            code = _backup(opts, root, sch.log, time.time(), url, True)
            from rover import run
    except KeyboardInterrupt:
        # SIGINT, or SIGTERM on CPython (run.begin): wherever it landed in a backup, the
        # state is whole (README, "The state folder") and the next run resumes.
        sch.log("stopped (%s); the state is consistent and the next run resumes" % sch.stopped[0])
        return 0
    finally:
        from rover import fsys
        import os
        fsys.remove(opts["state"] + "/lock/owner")
        try:
            os.rmdir(opts["state"] + "/lock")
        except OSError:
            pass


def _drop():
    from anchor_core.compat import unload
    for k in list(sys.modules):
        if k == "rover.run" or k == "asyncio" or k.startswith("asyncio."):
            unload(sys.modules[k])

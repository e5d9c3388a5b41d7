"""The rover's state directory kept private, CPython only (MicroPython has no chmod; a
board's filesystem has no modes): the directory 0700, every file in it 0600. Run at every
start, so a state directory made before this rule, or under a permissive umask, is fixed."""
import os
import stat


def make_private(state_dir, umask=False):
    """umask: what this process creates from here on is private too (the commands that
    write state; not fetch, whose --out file is the user's)."""
    if umask:
        os.umask(os.umask(0o077) | 0o077)
    if not os.path.isdir(state_dir):
        return
    for dirpath, dirnames, filenames in os.walk(state_dir):
        for name, mode in [(dirpath, 0o700)] + [(os.path.join(dirpath, f), 0o600) for f in filenames]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(name, stat.S_IMODE(st.st_mode) & mode)

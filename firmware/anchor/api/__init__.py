"""What operators reach (CPython only): the management API (mgmt.py) and the `anchor` command (cli.py)."""

# The rover's usage text (rover/cli.py), apart so the heap holds it only when shown.
USAGE = """usage: rover --link URL [--link URL ...] --device ID --state DIR [-q] [--json] COMMAND ...

  -q: no log lines and no status line; --json: one JSON object per line on stdout
  (progress, then a summary; docs/output.md). Errors go to stderr.

links: tcp://HOST:PORT, serial:DEVICE[:BAUD][?rxbuf=N&mtu=N], mqtt://HOST:PORT[?mtu=N];
  any may end in ?cost=N (default 1). Relay commands use the first link, backups the
  cheapest.

commands:
  backup ROOT [--outbox DIR] [--watch-wait S] [--retries N]
                                   back up the tree under ROOT through the anchor; files under
                                   ROOT/DIR are queued to go out, and the anchor may wait up to
                                   S seconds (default 600) to see them pass its relay; a
                                   lost link is reopened and the backup resumed up to N
                                   times (default 3)
  fetch URL --out PATH             HTTP(S) GET through the anchor, saved at PATH
  send PATH --to URL [--post]      HTTP PUT (or POST) of a file through the anchor
  publish TOPIC --file PATH        MQTT publish of a file through the anchor's broker
  pair CODE                        store the pairing secret from the code `anchorctl pair ID`
                                   printed on the anchor; every link is then authenticated
                                   and encrypted (no --link needed)
"""

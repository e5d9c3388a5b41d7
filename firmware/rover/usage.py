# The rover's usage text (rover/cli.py), apart so the heap holds it only when shown.
USAGE = """usage: rover --link URL [--link URL ...] --device ID --state DIR [-q] [--json] COMMAND ...

  -q: no log lines and no status line; --json: one JSON object per line on stdout
  (progress, then a summary; docs/output.md). Errors go to stderr.

links: tcp://HOST:PORT, serial:DEVICE[:BAUD][?rxbuf=N&mtu=N], mqtt://HOST:PORT[?mtu=N],
  mqtts://HOST:PORT[?mtu=N] (TLS); any may end in ?cost=N (default 1). Relay commands use
  the first link, backups the cheapest.
  --mqtt-user NAME --mqtt-password-file FILE: the broker's login; --mqtt-ca FILE: the CA
  certificate (PEM) that signed an mqtts:// broker's (MicroPython needs it; CPython
  defaults to the system's).

commands:
  backup ROOT [--outbox DIR] [--watch-wait S] [--retries N] [--tag T]
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
  run ROOT --every D [--jitter J] [--probe D] [--max-backoff D] [--count N]
                                   back ROOT up unattended: now, then every D (90, 90s, 30m,
                                   6h, 2d) plus a random part of J (default 10%); a cheaper
                                   link that answers (probed every --probe, default
                                   min(D, 60s)) starts a backup at once; a failed one is
                                   retried after 30s, 60s, ... up to --max-backoff
                                   (default D); --count stops after N backups. Holds
                                   the state folder for its whole life; SIGTERM/SIGINT
                                   stop it cleanly (exit 0).
                                   A board runs the same from main.py and rover.json
                                   (docs/rover.md)

exit status: 0 done, 1 failed, 2 a setting to fix, 3 committed but some items not stored,
  5 another rover holds the state folder
"""

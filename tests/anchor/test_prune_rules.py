"""Snapshot retention rules (anchor.storage.prune.plan) on synthetic snapshot times."""
import calendar
import time

import pytest

from anchor.storage.prune import parse_query, plan


def t(text):
    """'2024-05-06 23:30' in UTC -> unix seconds."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


def snaps(*times):
    return [{"id": i + 1, "time": t(x)} for i, x in enumerate(times)]


def ids(keep, forget):
    return [s["id"] for s, _ in keep], [s["id"] for s in forget]


def reasons(keep):
    return {s["id"]: r for s, r in keep}


def test_keep_last_keeps_the_newest_n():
    s = snaps(*["2024-05-0%d 12:00" % d for d in range(1, 8)])
    keep, forget = plan(s, keep_last=3)
    assert ids(keep, forget) == ([7, 6, 5], [4, 3, 2, 1])
    assert reasons(keep) == {7: ["last", "latest"], 6: ["last"], 5: ["last"]}
    # more than there are: everything stays
    assert ids(*plan(s, keep_last=50)) == ([7, 6, 5, 4, 3, 2, 1], [])


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_with_snapshots():
    s = snaps("2024-05-01 08:00", "2024-05-01 20:00",          # day 1: 2 is its newest
              "2024-05-03 09:00",                              # no snapshot on the 2nd
              "2024-05-04 01:00", "2024-05-04 12:00", "2024-05-04 23:59")
    keep, forget = plan(s, keep_daily=3)
    # days with snapshots, newest first: the 4th (6), the 3rd (3), the 1st (2); the 2nd is skipped
    assert ids(keep, forget) == ([6, 3, 2], [5, 4, 1])
    keep, forget = plan(s, keep_daily=1)
    assert ids(keep, forget) == ([6], [5, 4, 3, 2, 1])


def test_days_are_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")     # UTC+14: local dates differ from UTC ones
    time.tzset()
    try:
        s = snaps("2024-05-01 09:00", "2024-05-01 10:30",   # both 2024-05-01 in UTC, the 2nd locally
                  "2024-05-01 23:30", "2024-05-02 00:30")  # a UTC midnight between these two
        keep, forget = plan(s, keep_daily=2)
        assert ids(keep, forget) == ([4, 3], [2, 1])
        keep, forget = plan(s, keep_daily=3)
        assert ids(keep, forget) == ([4, 3], [2, 1]), "3 and 2 and 1 are one UTC day"
        keep, forget = plan(s[:3], keep_daily=5)
        assert ids(keep, forget) == ([3], [2, 1])
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_keep_weekly_uses_iso_weeks():
    # 2024-05-05 is a Sunday, 2024-05-06 a Monday: a week boundary lies between them
    s = snaps("2024-04-22 12:00",                       # week 17
              "2024-04-29 12:00", "2024-05-05 23:00",   # week 18
              "2024-05-06 00:10", "2024-05-08 12:00")   # week 19
    keep, forget = plan(s, keep_weekly=2)
    assert ids(keep, forget) == ([5, 3], [4, 2, 1])
    keep, forget = plan(s, keep_weekly=10)
    assert ids(keep, forget) == ([5, 3, 1], [4, 2])
    # a year boundary: 2024-12-30 belongs to ISO week 1 of 2025, like 2025-01-02
    s = snaps("2024-12-27 12:00", "2024-12-30 12:00", "2025-01-02 12:00")
    assert ids(*plan(s, keep_weekly=5)) == ([3, 1], [2])


def test_rules_combine_and_the_latest_is_never_pruned():
    s = snaps("2024-05-01 08:00", "2024-05-01 20:00", "2024-05-02 08:00", "2024-05-02 09:00",
              "2024-05-09 08:00")
    keep, forget = plan(s, keep_last=1, keep_daily=2, keep_weekly=2)
    assert ids(keep, forget) == ([5, 4], [3, 2, 1])
    assert reasons(keep) == {5: ["last", "daily", "weekly", "latest"], 4: ["daily", "weekly"]}
    # a snapshot numbered after one with a later time (the anchor's clock went back): the
    # rules go by time, and the highest number (the rover's parent) is kept anyway
    s = [{"id": 1, "time": t("2024-05-01 08:00")}, {"id": 2, "time": t("2024-05-03 08:00")},
         {"id": 3, "time": t("2024-05-02 08:00")}]
    keep, forget = plan(s, keep_last=1)
    assert ids(keep, forget) == ([2, 3], [1])
    assert reasons(keep) == {2: ["last"], 3: ["latest"]}
    assert plan([], keep_last=1) == ([], [])


def test_a_rule_is_required_and_checked():
    s = snaps("2024-05-01 08:00")
    with pytest.raises(ValueError):
        plan(s)
    with pytest.raises(ValueError):
        plan(s, keep_last=0, keep_daily=0)
    with pytest.raises(ValueError):
        plan(s, keep_last=-1, keep_daily=2)
    assert parse_query({"keep_last": "2", "dry_run": "1"}) == {"keep_last": 2, "dry_run": True}
    assert parse_query({"keep_weekly": "4"}) == {"keep_weekly": 4, "dry_run": False}
    for bad in ({}, {"keep_last": "x"}, {"keep_last": "-1"}, {"keep_last": "1", "keep_monthly": "2"}):
        with pytest.raises(ValueError):
            parse_query(bad)

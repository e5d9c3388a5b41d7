# The named field indices of anchor_core/messages.py against its builders: the builders write
# fields by position, the rest of the firmware reads them by name, and both must agree.
from anchor_core import messages as m


def test_builders_put_each_field_at_its_name():
    h = m.hello("rover-1", 7, m.CAP_ZLIB)
    assert h[m.MSG_TYPE] == m.HELLO
    assert (h[m.HELLO_DEVICE], h[m.HELLO_PARENT], h[m.HELLO_CAPS]) == ("rover-1", 7, m.CAP_ZLIB)
    assert m.welcome(3, False, 0)[m.WELCOME_PARENT_OK] is False
    e = m.put_entry("a/b", m.T_LINK, 5, 9, 0o644, None, "t", m.FLAG_QUEUED)
    assert (e[m.ENTRY_OP], e[m.ENTRY_PATH], e[m.ENTRY_TYPE], e[m.ENTRY_SIZE], e[m.ENTRY_MTIME],
            e[m.ENTRY_MODE], e[m.ENTRY_OID], e[m.ENTRY_TARGET], e[m.ENTRY_FLAGS]) == \
        (m.OP_PUT, "a/b", m.T_LINK, 5, 9, 0o644, None, "t", m.FLAG_QUEUED)
    assert m.del_entry("x")[m.ENTRY_PATH] == "x"
    b = m.entries(4, [e])
    assert (b[m.ENTRIES_SEQ], b[m.ENTRIES_ITEMS]) == (4, [e])
    v = m.verdict(4, [0], [[1, 30]])
    assert (v[m.VERDICT_WANTED], v[m.VERDICT_WATCHED]) == ([0], [[1, 30]])
    w = v[m.VERDICT_WATCHED][0]
    assert (w[m.WATCH_INDEX], w[m.WATCH_SECONDS]) == (1, 30)
    p = m.list_part(2, 5, [b"i" * 32], True)
    assert m.chunklist([p])[m.CHUNKLIST_PARTS] == [p]
    q = m.need_part(2, 5, [0])
    assert m.parts_key([p]) == m.parts_key([q]) == ((2, 5),)
    n = m.need([q], [b"n" * 16, [[0]]])
    assert n[m.NEED_PARTS] == [q]
    assert n[m.NEED_CHALLENGE][m.CHALLENGE_NONCE] == b"n" * 16
    assert n[m.NEED_CHALLENGE][m.CHALLENGE_POSITIONS] == [[0]]
    d = m.data(b"c" * 32, m.ENC_ZLIB, b"z")
    assert (d[m.DATA_ID], d[m.DATA_ENC], d[m.DATA_PAYLOAD]) == (b"c" * 32, m.ENC_ZLIB, b"z")
    pr = m.proof(b"c" * 32, b"t" * m.PROOF_TAG)
    assert (pr[m.PROOF_ID], pr[m.PROOF_MAC]) == (b"c" * 32, b"t" * m.PROOF_TAG)
    c = m.commit(b"r" * 32, 3, 10)
    assert (c[m.COMMIT_ROOT], c[m.COMMIT_COUNT], c[m.COMMIT_BYTES]) == (b"r" * 32, 3, 10)
    assert m.committed(8)[m.COMMITTED_SNAPSHOT] == 8
    er = m.error(m.E_TREE, "no")
    assert (er[m.ERROR_CODE], er[m.ERROR_TEXT]) == (m.E_TREE, "no")
    assert m.watchwait(60)[m.WATCHWAIT_SECONDS] == 60
    assert m.watched([1])[m.WATCHED_MISSING] == [1]


def test_relay_builders_put_each_field_at_its_name():
    f = m.fetch("http://example.org/", [["A", "b"]])
    assert (f[m.FETCH_URL], f[m.FETCH_HEADERS]) == ("http://example.org/", [["A", "b"]])
    s = m.send_req("PUT", "http://example.org/x", 5, "text/plain")
    assert (s[m.SEND_METHOD], s[m.SEND_URL], s[m.SEND_SIZE], s[m.SEND_TYPE]) == \
        ("PUT", "http://example.org/x", 5, "text/plain")
    p = m.publish("t/1", 5, 1, True)
    assert (p[m.PUBLISH_TOPIC], p[m.PUBLISH_SIZE], p[m.PUBLISH_QOS], p[m.PUBLISH_RETAIN]) == ("t/1", 5, 1, True)
    r = m.result(200, 5)
    assert (r[m.RESULT_STATUS], r[m.RESULT_SIZE]) == (200, 5)
    assert m.body(b"x")[m.BODY_DATA] == b"x"
    assert m.end(5)[m.END_SIZE] == 5
    assert m.fail(m.F_TIMEOUT, "late")[m.FAIL_TEXT] == "late"


def test_tree_record_fields():
    r = m.tree_record("a", m.T_FILE, 5, 9, 0o600, b"o" * 32)
    assert (r[m.REC_PATH], r[m.REC_TYPE], r[m.REC_SIZE], r[m.REC_MTIME], r[m.REC_MODE], r[m.REC_OID],
            r[m.REC_TARGET]) == ("a", m.T_FILE, 5, 9, 0o600, b"o" * 32, None)


def test_a_message_one_field_short_is_refused():
    # check()'s minimum lengths, one per type number, follow from the last required field.
    cid = b"c" * 32
    shortest = [
        m.hello("r", None, 0), m.welcome(None, True, 0), m.entries(0, []), m.verdict(0, []),
        m.chunklist([]), m.need([]), m.data(cid, m.ENC_RAW, b""), m.commit(cid, 1, 1), m.committed(1),
        m.error(1, "x"), m.fetch("http://example.org/"), m.send_req("PUT", "http://example.org/", 0, "a/b"),
        m.publish("t", 0, 0, False), m.result(200), m.body(b""), m.end(0), m.fail(1, "x"),
        m.watchwait(1), m.watched([]), m.proof(cid, b"t" * m.PROOF_TAG),
    ]
    # and the restore's (anchor_core/restoremsg.py), installed: every type NAMES knows
    from anchor_core import restoremsg as rm
    rm.install()
    shortest += [
        rm.restore(None, "", 0, 15), [rm.RSNAP, 1, 0, 0], rm.seeds(0, 0, []), [rm.SEEDASK, 0, []],
        rm.seedlist(0, 0, [], [], True, 0), [rm.SEEDEND, 0],
        [rm.RPUT, "d", m.T_DIR, 0, 0, 0o755, None, None, rm.H_WRITE, 0, None], [rm.RCOPY, 0, "f", 0, 1],
        [rm.RDATA, cid, m.ENC_RAW, 1, 1, b"x"], [rm.RDEL, "f"], [rm.RDONE, 0, 0, 0, 0], [rm.RTOTAL, 0, 0, 0],
    ]
    # and the sub-chunk delta's (anchor_core/delta.py) and resumed uploads' (anchor_core/resumemsg.py)
    from anchor_core import delta
    from anchor_core import resumemsg as um
    delta.install()
    um.install()
    shortest += [[delta.BASEQ, cid], [delta.BASE, cid, 0, b""], [delta.DELTA, cid, 1, b"\x02x"],
                 [delta.DELTAOK, cid, True],
                 um.upask(b"u" * um.ID_SIZE), um.held(b"u" * um.ID_SIZE, 0, cid)]
    assert sorted(msg[m.MSG_TYPE] for msg in shortest) == sorted(m.NAMES)
    for msg in shortest:
        m.check(msg)
        try:
            m.check(msg[:-1])
        except m.ProtocolError as e:
            assert e.code == m.E_PROTOCOL
        else:
            assert False, "accepted %r" % (msg[:-1],)
    for t in (0, -1, 37, max(m.NAMES) + 1, 1 << 70):
        try:
            m.check([t, 1, 2, 3, 4, 5, 6])
        except m.ProtocolError as e:
            assert e.code == m.E_PROTOCOL
        else:
            assert False, "accepted type %d" % t

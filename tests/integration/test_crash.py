"""Crash safety of the real engine: SIGKILL under concurrent load (several
generations of the write-ahead file on one data directory), SIGTERM drains,
deduplication across restarts, a small write-ahead file that wraps many
times, and the one-engine-per-data-directory lock.

The invariants checked after every restart (check_log):
  * every acknowledged event (201/200) is present exactly once, with the
    sequence and streamversion it was acknowledged with, and its data;
  * the log's sequences are 1..head with no gap or repeat;
  * each subject's streamversions are 0..n-1 in log order, and the stream
    read (/streams/{subject}) agrees with the log;
  * no (source, id) appears twice; an event whose request had an unknown
    outcome (the connection broke) appears at most once; an event refused
    with 503 or never sent does not appear at all.

Randomness is seeded: the seed is printed as '# seed N' and MT_SEED=N
repeats a run's random choices (publisher counts, batch sizes, subjects,
delays before the kill; thread interleaving is the OS's). No assertion
depends on timing: waits are bounded only to fail instead of hanging.
"""
import http.client
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import zlib

import mtlib
from mtlib import Engine

SEED = int(os.environ.get("MT_SEED") or random.SystemRandom().randrange(1, 1000000))
SOURCE = "/crash"
SUBJECTS = ["subj-%02d" % i for i in range(50)]

JSON_BATCH = {"Content-Type": "application/cloudevents-batch+json"}
JSON_ONE = {"Content-Type": "application/cloudevents+json"}


def seeded(offset):
    """A Random for one test; prints the seed that reproduces it."""
    print("# seed %d" % SEED, flush=True)
    return random.Random(SEED * 1000 + offset)


def expected_data(eid):
    """The data of an event is a function of its id, so it can be checked:
    0-240 bytes of padding, ~300 for the write-ahead test's events ('w...')."""
    h = zlib.crc32(eid.encode())
    return {"id": eid, "pad": "p" * (280 + h % 40 if eid.startswith("w") else h % 240)}


def make_event(eid, subject, data=None, source=SOURCE):
    e = {"specversion": "1.0", "id": eid, "source": source, "type": "crash.test",
         "data": data if data is not None else expected_data(eid)}
    if subject is not None:
        e["subject"] = subject
    return e


def post(conn, events, single):
    """POSTs one event (structured) or a batch; returns (status, parsed body or raw bytes)."""
    if single:
        conn.request("POST", "/events", body=json.dumps(events[0]).encode(), headers=JSON_ONE)
    else:
        conn.request("POST", "/events", body=json.dumps(events).encode(), headers=JSON_BATCH)
    r = conn.getresponse()
    raw = r.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw
    if r.will_close:
        conn.close()
    return r.status, body


class Ledger:
    """What the test knows about every event it ever sent (thread-safe)."""

    def __init__(self):
        self.mu = threading.Lock()
        self.subject = {}   # id -> subject (None: no subject), for everything sent
        self.acked = {}     # id -> (sequence, streamversion)
        self.unknown = set()  # the request's outcome is unknown
        self.refused = set()  # answered 503: nothing was appended
        self.bad = []       # unexpected answers: (status, body, ids)

    def sent(self, events):
        with self.mu:
            for ev in events:
                self.subject[ev["id"]] = ev.get("subject")

    def answered(self, events, st, body, allow_duplicates=False):
        ids = [ev["id"] for ev in events]
        with self.mu:
            if st in (200, 201) and isinstance(body, dict):
                res = body.get("events")
                if (not isinstance(res, list) or [r.get("id") for r in res] != ids):
                    self.bad.append((st, body, ids))
                    self.unknown.update(ids)
                    return
                dups = [r for r in res if r.get("duplicate")]
                if (dups and not allow_duplicates) or (st == 200) != (len(dups) == len(res)):
                    self.bad.append((st, body, ids))
                for r in res:
                    self.acked[r["id"]] = (int(r["sequence"]), r.get("streamversion"))
                    self.unknown.discard(r["id"])
            elif st == 503:
                self.refused.update(ids)
            else:
                self.bad.append((st, body, ids))
                self.unknown.update(ids)

    def lost(self, events):
        with self.mu:
            self.unknown.update(ev["id"] for ev in events)


class Publisher(threading.Thread):
    """Publishes single structured events and batches of 2-10 on its own
    keep-alive connection until stopped; a broken connection makes the
    request's events 'unknown outcome' and the publisher reconnects."""

    def __init__(self, engine, ledger, tag, rng, batch=(2, 10), p_single=0.4, subjects=SUBJECTS,
                 max_events=None):
        super().__init__(daemon=True)
        self.port = engine.port
        self.ledger, self.tag, self.rng = ledger, tag, rng
        self.batch, self.p_single, self.subjects = batch, p_single, subjects
        self.max_events = max_events
        self.stopping = threading.Event()
        self.requests = 0
        self.acked_events = 0
        self.errors = 0

    def run(self):
        conn = None
        i = 0
        while not self.stopping.is_set():
            if self.max_events is not None and i >= self.max_events:
                break
            single = self.rng.random() < self.p_single
            k = 1 if single else self.rng.randint(*self.batch)
            evs = []
            for _ in range(k):
                i += 1
                evs.append(make_event("%s-%d" % (self.tag, i), self.rng.choice(self.subjects)))
            self.ledger.sent(evs)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                st, body = post(conn, evs, single)
            except (OSError, http.client.HTTPException):
                self.ledger.lost(evs)
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.stopping.wait(0.02)
                continue
            self.requests += 1
            if st in (200, 201):
                self.acked_events += k
            self.ledger.answered(evs, st, body)
        if conn is not None:
            conn.close()


class Reader(threading.Thread):
    """Reads on its own keep-alive connection until stopped: the log (some
    requests as long polls past the head), a stream, and /healthz. Records
    every answer's status; a broken connection is retried."""

    def __init__(self, engine, rng):
        super().__init__(daemon=True)
        self.port, self.rng = engine.port, rng
        self.stopping = threading.Event()
        self.statuses = {}   # (kind, status) -> count
        self.after = 0

    def run(self):
        conn = None
        while not self.stopping.is_set():
            x = self.rng.random()
            if x < 0.4:
                kind, path = "log", "/events?after=%d&limit=200" % self.after
            elif x < 0.6:
                kind, path = "poll", "/events?after=999999999&limit=10&wait=1s"
            elif x < 0.8:
                kind, path = "stream", "/streams/%s?from=0&limit=50" % self.rng.choice(SUBJECTS)
            else:
                kind, path = "health", "/healthz"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", path)
                r = conn.getresponse()
                raw = r.read()
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                self.stopping.wait(0.02)
                continue
            key = (kind, r.status)
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if kind == "log" and r.status == 200:
                page = json.loads(raw)
                self.after = int(page[-1]["sequence"]) if page else 0
        if conn is not None:
            conn.close()


def run_publishers(pubs):
    for p in pubs:
        p.start()


def stop_publishers(pubs, what):
    for p in pubs:
        p.stopping.set()
    for p in pubs:
        p.join(60)
        assert not p.is_alive(), "%s: a publisher is stuck (request not answered in 30 s)" % what


def wait_for_acks(pubs, n, what, limit=60):
    """Waits (bounded) until the publishers together have n events acknowledged."""
    end = time.monotonic() + limit
    while sum(p.acked_events for p in pubs) < n:
        assert time.monotonic() < end, "%s: fewer than %d events acknowledged in %d s" % (
            what, n, limit)
        time.sleep(0.02)


def get_json(e, path):
    st, hdrs, body = e.request("GET", path)
    return st, hdrs, json.loads(body) if body else None


def check_log(e, ledger, what):
    """Checks every invariant of the module docstring against the running
    engine; returns {id: event} of what the log holds."""
    log = e.read_all()
    seqs = [int(ev["sequence"]) for ev in log]
    if seqs != list(range(1, len(seqs) + 1)):
        gaps = [(a, b) for a, b in zip([0] + seqs, seqs) if b != a + 1]
        raise AssertionError("%s: sequences not contiguous 1..%d; breaks (prev, next): %r"
                             % (what, len(seqs), gaps[:10]))
    st, hdrs, health = get_json(e, "/healthz")
    assert st == 200 and int(health["head"]) == len(log), (what, st, health, len(log))

    by_id = {}
    streams = {}
    for ev in log:
        key = (ev["source"], ev["id"])
        assert key not in by_id, "%s: (source, id) %r twice: sequences %s and %s" % (
            what, key, by_id[key]["sequence"], ev["sequence"])
        by_id[key] = ev
        if "subject" in ev:
            streams.setdefault(ev["subject"], []).append(ev)
    for subj, evs in streams.items():
        vs = [ev["streamversion"] for ev in evs]
        if vs != list(range(len(vs))):
            bad = [(i, v) for i, v in enumerate(vs) if v != i]
            raise AssertionError("%s: stream %s has versions out of line (index, version): %r"
                                 % (what, subj, bad[:10]))
        # The stream read agrees with the log.
        st, _, page = get_json(e, "/streams/%s?from=0&limit=10000" % subj)
        assert st == 200, (what, subj, st)
        got = [(x["sequence"], x["streamversion"], x["id"]) for x in page]
        want = [(x["sequence"], x["streamversion"], x["id"]) for x in evs]
        assert got == want, "%s: /streams/%s differs from the log (%d vs %d events)" % (
            what, subj, len(got), len(want))

    with ledger.mu:
        lost = []
        for eid, (seq, ver) in ledger.acked.items():
            ev = by_id.get((SOURCE, eid))
            if ev is None:
                lost.append((eid, seq, ver))
                continue
            assert int(ev["sequence"]) == seq and ev.get("streamversion") == ver, (
                "%s: %s acknowledged as (%d, %r), log has (%s, %r)"
                % (what, eid, seq, ver, ev["sequence"], ev.get("streamversion")))
        assert not lost, "%s: %d acknowledged event(s) lost (id, seq, version), head %d: %r" % (
            what, len(lost), len(log), sorted(lost, key=lambda x: x[1])[:10])
        for (src, eid), ev in by_id.items():
            if src != SOURCE:
                continue
            assert eid in ledger.subject, "%s: phantom event %r (never sent)" % (what, eid)
            assert eid in ledger.acked or eid in ledger.unknown, (
                "%s: event %s is in the log but was refused (503)" % (what, eid)
                if eid in ledger.refused else
                "%s: event %s is in the log but was never acknowledged nor in flight" % (what, eid))
            assert ev.get("subject") == ledger.subject[eid], (what, eid, ev.get("subject"))
            assert ev.get("data") == expected_data(eid), (
                "%s: data of %s differs: %r" % (what, eid, ev.get("data")))
    return by_id


def republish_unknown(e, ledger, by_id, rng, n, what):
    """Sends again (same source, id, subject, data) up to n events whose
    outcome was unknown: a stored one must be answered as a duplicate with
    its original position, one that was not stored is appended. Half go one
    at a time, the rest as one batch."""
    with ledger.mu:
        cands = sorted(ledger.unknown)
    rng.shuffle(cands)
    cands = cands[:n]
    if not cands:
        return 0
    conn = e.conn()
    half = len(cands) // 2
    groups = [[c] for c in cands[:half]] + ([cands[half:]] if cands[half:] else [])
    stored = 0
    try:
        for g in groups:
            evs = [make_event(eid, ledger.subject[eid]) for eid in g]
            st, body = post(conn, evs, len(evs) == 1)
            assert st in (200, 201) and isinstance(body, dict), (what, st, body)
            res = body["events"]
            assert [r["id"] for r in res] == g, (what, body)
            all_dup = True
            for eid, r in zip(g, res):
                old = by_id.get((SOURCE, eid))
                if old is not None:
                    stored += 1
                    assert r.get("duplicate") is True, (
                        "%s: %s is in the log at %s but a re-publish answered %r"
                        % (what, eid, old["sequence"], r))
                    assert int(r["sequence"]) == int(old["sequence"]) and \
                        r.get("streamversion") == old.get("streamversion"), (what, eid, r, old)
                else:
                    all_dup = False
                    assert not r.get("duplicate"), (
                        "%s: %s is not in the log but a re-publish answered %r" % (what, eid, r))
            assert st == (200 if all_dup else 201), (what, st, body)
            ledger.answered(evs, st, body, allow_duplicates=True)
    finally:
        conn.close()
    print("# %s: re-published %d unknown-outcome event(s), %d had been stored"
          % (what, len(cands), stored), flush=True)
    return len(cands)


def test_kill9_under_load_keeps_every_acknowledged_event():
    rng = seeded(1)
    ledger = Ledger()
    e = Engine()
    try:
        e.start()
        for rnd in range(3):
            what = "round %d" % rnd
            n = rng.randint(16, 32)
            delay = rng.uniform(0.5, 2.0)
            pubs = [Publisher(e, ledger, "k%d-%d" % (rnd, i), random.Random(rng.random()))
                    for i in range(n)]
            run_publishers(pubs)
            # Some load must be acknowledged before the kill (bounded wait, no timing assert).
            wait_for_acks(pubs, 1, what)
            time.sleep(delay)
            e.kill()
            stop_publishers(pubs, what)
            with ledger.mu:
                bad = list(ledger.bad)
            assert not bad, "%s: unexpected answers under load: %r" % (what, bad[:3])
            print("# %s: %d publishers, %.2f s, %d requests answered, %d acked events total, "
                  "%d unknown outcome" % (what, n, delay, sum(p.requests for p in pubs),
                                          len(ledger.acked), len(ledger.unknown)), flush=True)
            e.start()
            by_id = check_log(e, ledger, what + " after kill -9")
            republish_unknown(e, ledger, by_id, rng, 40, what)
            check_log(e, ledger, what + " after re-publish")
        # The re-published events were written since the last restart: one more crash.
        e.kill()
        e.start()
        check_log(e, ledger, "after the last kill -9")
        rc = e.stop()
        assert rc == 0, "SIGTERM exit %s:\n%s" % (rc, "\n".join(e.stderr_lines[-20:]))
        e.start()
        check_log(e, ledger, "after a clean stop")
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_sigterm_drains_and_answers_inflight():
    rng = seeded(2)
    ledger = Ledger()
    e = Engine()
    try:
        e.start()
        n = rng.randint(16, 32)
        pubs = [Publisher(e, ledger, "t-%d" % i, random.Random(rng.random())) for i in range(n)]
        readers = [Reader(e, random.Random(rng.random())) for _ in range(4)]
        run_publishers(pubs + readers)
        wait_for_acks(pubs, 1, "sigterm")
        time.sleep(rng.uniform(0.3, 1.2))
        e.proc.send_signal(15)
        try:
            rc = e.proc.wait(45)
        except subprocess.TimeoutExpired:
            rc = None
        stop_publishers(pubs + readers, "sigterm")
        if rc is None:
            tail = "\n".join(e.stderr_lines[-20:])
            e.kill()
            raise AssertionError("engine did not exit within 45 s of SIGTERM under load:\n" + tail)
        e._reader.join(5)
        stderr = list(e.stderr_lines)
        e.proc = None
        with ledger.mu:
            bad = list(ledger.bad)
            refused = len(ledger.refused)
        print("# sigterm: %d publishers, %d acked, %d refused with 503, %d unknown outcome"
              % (n, len(ledger.acked), refused, len(ledger.unknown)), flush=True)
        reads = {}
        for r in readers:
            for k, v in r.statuses.items():
                reads[k] = reads.get(k, 0) + v
        print("# sigterm: reads answered %r" % sorted(reads.items()), flush=True)
        problems = []
        if rc != 0:
            sig = " (killed by signal %d)" % -rc if rc < 0 else ""
            # The sanitizer report, if any, starts at its ERROR line.
            start = next((k for k, l in enumerate(stderr) if "ERROR:" in l), max(0, len(stderr) - 20))
            problems.append("exit %s%s on SIGTERM; stderr:\n%s"
                            % (rc, sig, "\n".join(stderr[start:start + 30])))
        # Every answer while draining is a 201/200, or a 503 that appended nothing.
        if bad:
            problems.append("publish answers other than 201/200/503: %r" % (bad[:3],))
        # A read is answered 200 (a long poll past the head: 200 with []), 404 for a stream
        # with no events yet, or 503 while draining.
        odd = {k: v for k, v in reads.items()
               if k[1] not in (200, 503) and k != ("stream", 404)}
        if odd:
            problems.append("read answers other than 200/503: %r" % odd)
        # Whatever happened, nothing acknowledged may be lost (checked before reporting).
        e.start()
        check_log(e, ledger, "after SIGTERM")
        assert e.stop() == 0
        assert not problems, "\n".join(problems)
    finally:
        e.cleanup()


def test_restart_after_clean_stop_and_after_kill_keeps_dedupe():
    rng = seeded(3)
    e = Engine()
    try:
        e.start()

        def publish_set(prefix, count):
            """Publishes 'count' events (singles and batches, some without a
            subject); returns [(event, (sequence, streamversion))]."""
            out = []
            conn = e.conn()
            i = 0
            while i < count:
                k = min(count - i, 1 if rng.random() < 0.4 else rng.randint(2, 10))
                evs = [make_event("%s-%d" % (prefix, i + j),
                                  None if rng.random() < 0.2 else rng.choice(SUBJECTS[:8]))
                       for j in range(k)]
                i += k
                st, body = post(conn, evs, k == 1)
                assert st == 201, (st, body)
                for ev, r in zip(evs, body["events"]):
                    assert r["id"] == ev["id"] and not r.get("duplicate"), body
                    assert ("streamversion" in r) == ("subject" in ev), (ev, r)
                    out.append((ev, (int(r["sequence"]), r.get("streamversion"))))
            conn.close()
            return out

        def head():
            st, _, h = get_json(e, "/healthz")
            assert st == 200, (st, h)
            return int(h["head"])

        def expect_duplicates(items, what):
            """Publishes the same events again (singles and batches): every
            answer is 200 with duplicate:true and the original position."""
            before = head()
            conn = e.conn()
            pos = 0
            while pos < len(items):
                k = 1 if rng.random() < 0.5 else rng.randint(2, 10)
                chunk = items[pos:pos + k]
                pos += k
                st, body = post(conn, [ev for ev, _ in chunk], len(chunk) == 1)
                assert st == 200, "%s: re-publish answered %s %r" % (what, st, body)
                for (ev, (seq, ver)), r in zip(chunk, body["events"]):
                    assert r["id"] == ev["id"] and r.get("duplicate") is True, (what, r)
                    assert int(r["sequence"]) == seq and r.get("streamversion") == ver, (
                        "%s: %s was (%d, %r), duplicate answer %r" % (what, ev["id"], seq, ver, r))
            conn.close()
            assert head() == before, "%s: re-publishing duplicates moved the head" % what

        first = publish_set("d1", 120)
        rc = e.stop()
        assert rc == 0, rc
        e.start()
        expect_duplicates(first, "after clean stop")

        second = publish_set("d2", 120)
        e.kill()  # the second set: in the write-ahead file, or in a checkpoint made since
        e.start()
        expect_duplicates(second + first, "after kill -9")

        # A batch mixing stored and new events: 201, duplicates flagged, only new ones appended.
        old = [second[3], first[7]]
        new = [make_event("d3-%d" % i, "subj-00") for i in range(3)]
        batch = [new[0], old[0][0], new[1], old[1][0], new[2]]
        h0 = head()
        st, body = post(e.conn(), batch, False)
        assert st == 201, (st, body)
        res = body["events"]
        assert [r.get("duplicate", False) for r in res] == [False, True, False, True, False], body
        assert (int(res[1]["sequence"]), res[1].get("streamversion")) == old[0][1], (res, old)
        assert (int(res[3]["sequence"]), res[3].get("streamversion")) == old[1][1], (res, old)
        assert [int(res[i]["sequence"]) for i in (0, 2, 4)] == [h0 + 1, h0 + 2, h0 + 3], (h0, res)
        third = [(ev, (int(r["sequence"]), r.get("streamversion")))
                 for ev, r in zip(batch, res) if ev in new]
        # The same id from another source is another event.
        other = make_event(first[0][0]["id"], "subj-00", source="/crash-other")
        st, body = post(e.conn(), [other], True)
        assert st == 201 and not body["events"][0].get("duplicate"), (st, body)
        fourth = [(other, (int(body["events"][0]["sequence"]), body["events"][0]["streamversion"]))]
        e.kill()
        e.start()
        expect_duplicates(third + fourth + first + second, "after a second kill -9")
        rc = e.stop()
        assert rc == 0, rc
        e.start()
        expect_duplicates(first + second + third + fourth, "after the final clean stop")
        log = e.read_all()
        assert [int(x["sequence"]) for x in log] == list(range(1, 245)), len(log)
        assert e.stop() == 0
    finally:
        e.cleanup()


def wal_generation(data_dir):
    """The generation in the write-ahead file's newest header slot (layout in
    src/mt_wal.h / mt_wal.c: two 32 KiB slots, magic 'MTWAL002', generation
    as a big-endian u32 at offset 8); None if neither slot has the magic."""
    gens = []
    with open(os.path.join(data_dir, "wal"), "rb") as f:
        for slot in (0, 1):
            f.seek(slot * 32768)
            h = f.read(12)
            if h[:8] == b"MTWAL002":
                gens.append(int.from_bytes(h[8:12], "big"))
    return max(gens) if gens else None


def test_write_ahead_wraps_many_generations():
    rng = seeded(4)
    tmp = tempfile.mkdtemp(prefix="moontide-it-cfg-")
    cfg = os.path.join(tmp, "moontide.yaml")
    with open(cfg, "w") as f:
        f.write("version: 1\nengine:\n  wal_size: 1MiB\n")
    e = Engine(config=cfg)
    try:
        e.start()
        ledger = Ledger()
        size = os.path.getsize(os.path.join(e.data_dir, "wal"))
        assert size == 1 << 20, "wal_size: 1MiB gave a write-ahead file of %d bytes" % size
        gen0 = wal_generation(e.data_dir)
        for rnd in range(2):
            what = "wal round %d" % rnd
            # 4 publishers x 1500 events in batches of 50 (~300 bytes of data each);
            # a fifth keeps publishing until the kill so some requests are in flight.
            pubs = [Publisher(e, ledger, "w%d-%d" % (rnd, i), random.Random(rng.random()),
                              batch=(50, 50), p_single=0.0, subjects=SUBJECTS[:9],
                              max_events=1500) for i in range(4)]
            tail = Publisher(e, ledger, "w%d-tail" % rnd, random.Random(rng.random()),
                             batch=(50, 50), p_single=0.0, subjects=SUBJECTS[:9])
            run_publishers(pubs + [tail])
            for p in pubs:
                p.join(120)
                assert not p.is_alive(), "%s: publisher stuck" % what
            wait_for_acks([tail], 50, what)
            gen = wal_generation(e.data_dir)
            e.kill()
            stop_publishers([tail], what)
            with ledger.mu:
                bad = list(ledger.bad)
            assert not bad, "%s: unexpected answers: %r" % (what, bad[:3])
            print("# %s: %d acked events total, write-ahead generation %s -> %s"
                  % (what, len(ledger.acked), gen0, gen), flush=True)
            assert gen is not None and gen0 is not None and gen - gen0 >= 4, (
                "%s: the write-ahead file did not wrap (generation %s -> %s)" % (what, gen0, gen))
            e.start()
            by_id = check_log(e, ledger, what + " after kill -9")
            assert sum(1 for src, _ in by_id if src == SOURCE) >= 6000 * (rnd + 1)
            gen0 = wal_generation(e.data_dir)
        assert e.stop() == 0
        e.start()
        check_log(e, ledger, "wal after a clean stop")
        assert e.stop() == 0
    finally:
        e.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def test_second_engine_on_same_data_dir_is_refused():
    rng = seeded(5)
    ledger = Ledger()
    e = Engine()
    try:
        e.start()
        pubs = [Publisher(e, ledger, "l-%d" % i, random.Random(rng.random())) for i in range(4)]
        run_publishers(pubs)
        wait_for_acks(pubs, 1, "lock")
        for attempt in range(3):
            try:
                rc, out, err = mtlib.run_cli("run", "--data-dir", e.data_dir,
                                             "--listen", "127.0.0.1:0", timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError("a second engine on the same data directory kept running")
            assert rc == 69, "second engine exited %s (want 69):\n%s" % (rc, err)
            assert e.data_dir in err and "in use" in err, (
                "the refusal does not name the data directory as in use:\n%s" % err)
        # The first engine kept serving throughout, and still does.
        n0 = sum(p.acked_events for p in pubs)
        wait_for_acks(pubs, n0 + 1, "lock: publishing after the refusals")
        stop_publishers(pubs, "lock")
        with ledger.mu:
            bad = list(ledger.bad)
            unknown = set(ledger.unknown)
        assert not bad, bad[:3]
        assert not unknown, "requests to the first engine failed: %r" % sorted(unknown)[:5]
        st, _, h = get_json(e, "/healthz")
        assert st == 200 and h["status"] == "ok", (st, h)
        check_log(e, ledger, "first engine after the refusals")
        # The refused engine touched nothing: the data survives a crash of the first.
        e.kill()
        e.start()
        check_log(e, ledger, "after kill -9 of the first engine")
        assert e.stop() == 0
    finally:
        e.cleanup()


HOLD_ENV = "MOONTIDE_TEST_CHECKPOINT_HOLD"
CHECKPOINT_STAGES = ("syncing", "synced", "recorded")


def wait_for_hold(e, hold, name, what, limit=120):
    """Waits (bounded) until the engine's checkpoint thread holds at the
    marker HOLD/name (see src/mt_store.h: MOONTIDE_TEST_CHECKPOINT_HOLD)."""
    path = os.path.join(hold, name)
    end = time.monotonic() + limit
    while not os.path.exists(path):
        assert e.proc is not None and e.proc.poll() is None, "%s: the engine exited" % what
        assert time.monotonic() < end, "%s: no checkpoint reached %s in %d s" % (what, name, limit)
        time.sleep(0.02)
    return path


def test_kill9_while_a_checkpoint_is_held_keeps_every_acknowledged_event():
    """Checkpoints run on a thread of their own. The first one after a start
    is held at one of its stages (before the sync of LMDB's file, after it,
    after the write-ahead header): publishers keep being acknowledged while
    it is held, and a kill -9 there loses nothing acknowledged."""
    rng = seeded(6)
    ledger = Ledger()
    hold = tempfile.mkdtemp(prefix="moontide-it-hold-")
    e = Engine()
    try:
        for stage in CHECKPOINT_STAGES:
            what = "checkpoint held at %s" % stage
            for name in os.listdir(hold):
                os.unlink(os.path.join(hold, name))
            e.env = {HOLD_ENV: hold}
            e.start()
            pubs = [Publisher(e, ledger, "h%s-%d" % (stage, i), random.Random(rng.random()))
                    for i in range(8)]
            run_publishers(pubs)
            # The load triggers checkpoint 1; let it pass the stages before this one.
            for earlier in CHECKPOINT_STAGES:
                marker = wait_for_hold(e, hold, "1-" + earlier, what)
                if earlier == stage:
                    break
                os.unlink(marker)
            # Held: publishing goes on (the checkpoint cannot finish while the marker exists).
            n0 = sum(p.acked_events for p in pubs)
            wait_for_acks(pubs, n0 + 300, what + ": publishing while held")
            assert os.path.exists(marker)
            e.kill()
            stop_publishers(pubs, what)
            with ledger.mu:
                bad = list(ledger.bad)
            assert not bad, "%s: unexpected answers: %r" % (what, bad[:3])
            print("# %s: %d acked events total, %d unknown outcome"
                  % (what, len(ledger.acked), len(ledger.unknown)), flush=True)
            e.env = None
            e.start()
            by_id = check_log(e, ledger, what + " after kill -9")
            republish_unknown(e, ledger, by_id, rng, 20, what)
            check_log(e, ledger, what + " after re-publish")
            assert e.stop() == 0
        e.start()
        check_log(e, ledger, "after the held checkpoints and a clean stop")
        assert e.stop() == 0
    finally:
        e.cleanup()
        shutil.rmtree(hold, ignore_errors=True)


mtlib.main(globals())

"""kill -9 under concurrent load: every acknowledged event survives exactly
once, the log stays contiguous, and every stream's versions have no gaps."""
import http.client
import json
import random
import threading
import time

import mtlib
from mtlib import Engine

SEED = int(time.time()) % 100000


class Publisher(threading.Thread):
    """Publishes single events and small batches until told to stop,
    recording what was acknowledged and what has an unknown outcome."""

    def __init__(self, engine, n, rng, tag):
        super().__init__(daemon=True)
        self.e, self.n, self.rng, self.tag = engine, n, rng, tag
        self.acked = {}      # id -> (sequence, streamversion)
        self.unknown = set()
        self.stop = False
        self.other = []      # unexpected statuses

    def run(self):
        conn = None
        i = 0
        while not self.stop:
            k = 1 if self.rng.random() < 0.5 else self.rng.randint(2, 10)
            evs = []
            for _ in range(k):
                i += 1
                evs.append(mtlib.event("%s-%d-%d" % (self.tag, self.n, i),
                                       subject="subj-%d" % self.rng.randint(0, 49),
                                       data={"n": i, "pad": "x" * self.rng.randint(0, 300)}))
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.e.port, timeout=30)
                if k == 1:
                    st, body = self.e.publish(evs[0], conn=conn)
                else:
                    st, body = self.e.publish_batch(evs, conn=conn)
            except Exception:
                for ev in evs:
                    self.unknown.add(ev["id"])
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
                continue
            if st == 201:
                for r in body["events"]:
                    self.acked[r["id"]] = (int(r["sequence"]), r.get("streamversion"))
            else:
                self.other.append((st, body))


def check_log(e, acked, unknown):
    log = e.read_all()
    seqs = [int(ev["sequence"]) for ev in log]
    assert seqs == list(range(1, len(seqs) + 1)), "sequences not contiguous"
    by_id = {}
    versions = {}
    for ev in log:
        key = (ev["source"], ev["id"])
        assert key not in by_id, "duplicate event %r" % (key,)
        by_id[key] = ev
        if "subject" in ev:
            versions.setdefault(ev["subject"], []).append(ev["streamversion"])
    for subj, vs in versions.items():
        assert vs == list(range(len(vs))), "stream %s versions %r" % (subj, vs[:20])
    for i, (seq, ver) in acked.items():
        ev = by_id.get(("/test", i))
        assert ev is not None, "acknowledged event %s lost" % i
        assert int(ev["sequence"]) == seq and ev.get("streamversion") == ver, (i, ev, seq, ver)
    for i in list(by_id):
        assert i[1] in acked or i[1] in unknown or i[1].startswith("pre-"), "phantom event %r" % (i,)
    return by_id


def test_kill9_under_load_keeps_every_acknowledged_event():
    rng = random.Random(SEED)
    print("# seed %d" % SEED)
    e = Engine().start()
    acked, unknown = {}, set()
    try:
        for rnd in range(3):
            pubs = [Publisher(e, n, random.Random(rng.random()), "r%d" % rnd) for n in range(16)]
            for p in pubs:
                p.start()
            time.sleep(0.5 + rng.random() * 1.5)
            e.kill()
            for p in pubs:
                p.stop = True
            for p in pubs:
                p.join(60)
                assert not p.other, p.other[:3]
                acked.update(p.acked)
                unknown |= p.unknown
            assert len(acked) > 0
            e.start()
            by_id = check_log(e, acked, unknown)
            # Retrying an unknown-outcome event is answered from the dedupe index
            # when it had been stored, and appended when it had not.
            for i in sorted(unknown)[:20]:
                ev = mtlib.event(i[len("e-"):], subject="subj-retry")
                st, body = e.publish(ev)
                r = body["events"][0]
                if ("/test", i) in by_id:
                    assert st == 200 and r.get("duplicate"), (i, st, body)
                    assert int(r["sequence"]) == int(by_id[("/test", i)]["sequence"])
                else:
                    assert st == 201, (i, st, body)
                acked[i] = (int(r["sequence"]), r.get("streamversion"))
            unknown -= set(acked)
            e.kill()
            e.start()
            check_log(e, acked, unknown)
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_sigterm_drains_and_answers_what_it_accepted():
    rng = random.Random(SEED + 1)
    e = Engine().start()
    try:
        pubs = [Publisher(e, n, random.Random(rng.random()), "t") for n in range(16)]
        for p in pubs:
            p.start()
        time.sleep(1.0)
        rc = e.stop(timeout=60)
        for p in pubs:
            p.stop = True
        acked, unknown = {}, set()
        for p in pubs:
            p.join(60)
            # While draining, a request is answered 201, or refused with 503.
            assert all(st == 503 for st, _ in p.other), p.other[:3]
            acked.update(p.acked)
            unknown |= p.unknown
        assert rc == 0, "engine exited %s on SIGTERM" % rc
        e.start()
        check_log(e, acked, unknown)
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_write_ahead_file_wraps_many_generations_before_a_kill():
    d = Engine()
    cfg = d.data_dir + "-cfg.yaml"
    with open(cfg, "w") as f:
        f.write("version: 1\nengine:\n  wal_size: 1MiB\n")
    e = Engine(config=cfg).start()
    try:
        acked = {}
        conn = e.conn()
        for b in range(60):
            evs = [mtlib.event("w%d-%d" % (b, k), subject="w%d" % (k % 9), data={"p": "y" * 300})
                   for k in range(50)]
            st, body = e.publish_batch(evs, conn=conn)
            assert st == 201, body
            for r in body["events"]:
                acked[r["id"]] = (int(r["sequence"]), r.get("streamversion"))
        e.kill()
        e.start()
        check_log(e, acked, set())
        assert len(e.read_all()) == 3000
        assert e.stop() == 0
    finally:
        e.cleanup()
        d.cleanup()


mtlib.main(globals())

"""Handlers with `workers: N` run ahead on worker threads: results whose
reads still hold are applied by the writer, the rest run again there. The
effects must be exactly those of running one at a time: exact counts,
per-subject order, across kill -9, with conflicting writes and emits."""
import json
import os
import random
import tempfile
import time

import mtlib
from mtlib import Engine, wait_for

SEED = int(time.time()) % 100000


def config(subs):
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nsubscriptions:\n" + subs)
    return path


def status(e, name):
    st, _, body = e.request("GET", "/subscriptions/" + name)
    assert st == 200, (st, body)
    return json.loads(body)


def table(e, name):
    st, _, body = e.request("GET", "/tables/%s?limit=10000" % name)
    assert st == 200, (st, body)
    return json.loads(body)


def test_workers_keep_counts_exact_and_subject_order_across_kill9():
    rng = random.Random(SEED)
    print("# seed %d" % SEED)
    cfg = config("  counter:\n    topics: [\"count.#\"]\n    handler: tests/lua/handlers/count.lua\n"
                 "    workers: 3\n"
                 "    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 50ms }\n")
    e = Engine(config=cfg).start()
    try:
        sent = {}
        total = 6000
        i = 0
        conn = e.conn()
        while i < total:
            batch = []
            for _ in range(200):
                subj = "s%02d" % rng.randrange(60)
                batch.append(mtlib.event("c%d" % i, subject=subj, type_="count.it"))
                sent[subj] = sent.get(subj, 0) + 1
                i += 1
            st, body = e.publish_batch(batch, conn=conn)
            assert st == 201, body
            if rng.random() < 0.1:
                e.kill()
                e.start()
                conn = e.conn()
        wait_for(lambda: status(e, "counter")["lag"] == 0, timeout=120, what="the counter")
        assert table(e, "counts") == sent
        s = status(e, "counter")
        # count.lua raises on an out-of-order event: nothing retried, nothing dead.
        assert s["dlq"] == 0 and s["retrying"] == 0 and s["retried"] == 0, s
        assert s["workers"] == 3, s
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_conflicting_writes_run_again_on_the_writer_and_stay_exact():
    cfg = config("  totals:\n    topics: [\"t.#\"]\n    handler: tests/lua/handlers/total.lua\n"
                 "    workers: 2\n    retry: { backoff: 10ms, max_backoff: 10ms }\n")
    with Engine(config=cfg) as e:
        assert e.request("POST", "/subscriptions/totals/pause")[0] == 200
        n = 2000
        want = {}
        for b in range(n // 200):
            batch = []
            for k in range(200):
                i = b * 200 + k
                subj = "s%d" % (i % 40)
                want[subj] = want.get(subj, 0) + 1
                batch.append(mtlib.event("t%d" % i, subject=subj, type_="t.x",
                                         data={"fail": i % 97 == 0}))
            assert e.publish_batch(batch)[0] == 201
        assert e.request("POST", "/subscriptions/totals/resume")[0] == 200
        # Handled, not "lag 0 and nothing retrying": a lane's next message may
        # be held for a moment between two jobs without having failed.
        wait_for(lambda: status(e, "totals")["handled"] == n, timeout=60,
                 what="every event handled")
        got = table(e, "totals")
        assert got.pop("all") == n, got  # a failed attempt's writes never count
        assert got == want
        s = status(e, "totals")
        # Every worker's first event read "all" before the other's writes: some
        # results must be run again, and the rest were used.
        assert s["run_again"] > 0 and s["run_ahead"] > 0, s
        assert s["handled"] == n and s["dlq"] == 0, s


def test_emits_and_logs_from_workers_happen_once():
    cfg = config("  confirm:\n    topics: [\"order.placed\"]\n"
                 "    handler: tests/lua/handlers/emitter.lua\n    workers: 2\n")
    with Engine(config=cfg) as e:
        assert e.request("POST", "/subscriptions/confirm/pause")[0] == 200
        e.publish_batch([mtlib.event("o%d" % i, subject="o%d" % i, type_="order.placed",
                                     data={"n": i}) for i in range(300)])
        assert e.request("POST", "/subscriptions/confirm/resume")[0] == 200
        wait_for(lambda: status(e, "confirm")["handled"] == 300, what="300 handled")
        evs = [ev for ev in e.read_all() if ev["type"] == "order.confirmed"]
        assert len(evs) == 300 and len({ev["id"] for ev in evs}) == 300
        assert sorted(ev["data"]["n"] for ev in evs) == list(range(300))
        logs = [l for l in e.stderr_lines if '"confirmed' in l]
        assert len(logs) == 300, len(logs)


def test_events_published_while_it_runs_are_run_ahead_and_emits_alone_run_again():
    # Published while the subscription runs, not behind a pause: each new
    # event waits for a round of the workers, whatever the machine's speed.
    # Only the runs that emit run again; one that does says nothing about
    # the workers' other results, which stay good.
    cfg = config("  counter:\n    topics: [\"count.#\"]\n"
                 "    handler: tests/lua/handlers/count_notify.lua\n    workers: 2\n")
    with Engine(config=cfg) as e:
        want = {}
        n = 3000
        notify = 0
        conn = e.conn()
        for b in range(n // 100):
            batch = []
            for k in range(100):
                i = b * 100 + k
                subj = "s%d" % (i % 30)
                want[subj] = want.get(subj, 0) + 1
                # On every subject, between events that do not emit; some
                # emit before they count, some after.
                notify += i % 7 == 0 or i % 11 == 0
                batch.append(mtlib.event("c%d" % i, subject=subj, type_="count.it",
                                         data={"notify": i % 7 == 0, "early": i % 11 == 0}))
            assert e.publish_batch(batch, conn=conn)[0] == 201
        wait_for(lambda: status(e, "counter")["handled"] == n, what="every event handled")
        assert table(e, "counts") == want
        s = status(e, "counter")
        assert s["run_again"] == notify and s["run_ahead"] == n - notify, s
        notices = [ev for ev in e.read_all() if ev["type"] == "notice.counted"]
        assert len(notices) == sum((i % 7 == 0) + (i % 11 == 0) for i in range(n))


def test_bad_workers_values_are_configuration_errors():
    cfg = config("  w:\n    topics: [\"a\"]\n    handler: tests/lua/handlers/count.lua\n"
                 "    workers: 0\n")
    rc, out, err = mtlib.run_cli("check", "-c", cfg)
    assert rc == 78 and "workers" in err, (rc, err)
    # A pull or webhook subscription runs no handler: workers would do nothing.
    for deliver in ("pull", "{ webhook: { url: \"http://127.0.0.1:9/x\" } }"):
        cfg = config("  w:\n    topics: [\"a\"]\n    deliver: %s\n    workers: 2\n" % deliver)
        rc, out, err = mtlib.run_cli("check", "-c", cfg)
        assert rc == 78 and "workers runs handlers; a pull or webhook subscription" in err, \
            (rc, err)
        assert "topology.yaml:4:5: error" in err, err  # where its settings start
    with Engine() as e:
        for deliver in ("pull", {"webhook": {"url": "http://127.0.0.1:9/x"}}):
            st, _, body = e.request("PUT", "/subscriptions/w",
                                    {"topics": ["a"], "deliver": deliver, "workers": 2})
            assert st == 400 and "workers runs handlers" in json.loads(body)["detail"], body
        st, _, body = e.request("PUT", "/subscriptions/w",
                                {"topics": ["a"], "deliver": "pull", "workers": 1})
        assert st == 201, body


if __name__ == "__main__":
    mtlib.main(globals())

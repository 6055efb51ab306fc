"""Pull consumers (deliver: pull): competing consumers lease events, ack,
nack and extend; an expired lease is redelivered; retries end in the
dead-letter queue; bad tokens are clear errors."""
import json
import os
import tempfile
import threading
import time

import mtlib
from mtlib import Engine


def config(extra=""):
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nsubscriptions:\n  work:\n    topics: [\"job.#\"]\n    deliver: pull\n"
                + extra)
    return path


def post(e, path, body=None):
    st, _, raw = e.request("POST", path, body)
    return st, json.loads(raw)


def test_two_competing_consumers_split_the_work_and_each_event_is_acked_once():
    with Engine(config=config()) as e:
        for b in range(4):
            e.publish_batch([mtlib.event("j%d-%d" % (b, k), type_="job.run", data={"n": k})
                             for k in range(50)])
        acked = {0: [], 1: []}

        def consumer(n):
            while True:
                st, items = post(e, "/subscriptions/work/pull?max=7&wait=300ms")
                assert st == 200, items
                if not items:
                    return
                st, ans = post(e, "/subscriptions/work/ack", {"leases": [i["lease"] for i in items]})
                assert st == 200 and ans["count"] == len(items), ans
                acked[n] += [i["event"]["id"] for i in items]

        ts = [threading.Thread(target=consumer, args=(n,)) for n in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        every = acked[0] + acked[1]
        assert sorted(every) == sorted("e-j%d-%d" % (b, k) for b in range(4) for k in range(50))
        assert len(set(every)) == 200
        assert acked[0] and acked[1], "one consumer got nothing"
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        assert s["handled"] == 200 and s["retrying"] == 0, s


def test_an_expired_lease_is_redelivered_and_old_tokens_are_refused():
    with Engine(config=config("    lease: 300ms\n")) as e:
        e.publish(mtlib.event("x", type_="job.run"))
        st, first = post(e, "/subscriptions/work/pull?max=10")
        assert st == 200 and len(first) == 1 and first[0]["attempt"] == 1, first
        # The consumer dies; after the lease the event comes back.
        again = []
        deadline = time.monotonic() + 20
        while not again and time.monotonic() < deadline:
            st, again = post(e, "/subscriptions/work/pull?max=10&wait=500ms")
        assert len(again) == 1 and again[0]["event"]["id"] == "e-x" and again[0]["attempt"] == 2, again
        st, ans = post(e, "/subscriptions/work/ack", {"leases": [first[0]["lease"]]})
        assert st == 409 and ans["unknown"] == [first[0]["lease"]], ans
        # A late ack of an expired lease that was not handed out again counts.
        time.sleep(0.5)
        st, ans = post(e, "/subscriptions/work/ack", {"leases": [again[0]["lease"]]})
        assert st == 200 and ans["count"] == 1, ans
        assert post(e, "/subscriptions/work/pull?max=10&wait=500ms") == (200, [])
        e.publish(mtlib.event("x2", type_="job.run"))
        st, again = post(e, "/subscriptions/work/pull?max=10&wait=5s")
        assert st == 200 and len(again) == 1, again
        st, ans = post(e, "/subscriptions/work/extend", {"leases": [again[0]["lease"]]})
        assert st == 200 and ans["count"] == 1, ans
        st, ans = post(e, "/subscriptions/work/ack", {"leases": [again[0]["lease"], "42-00"]})
        assert st == 409 and ans["count"] == 1 and ans["unknown"] == ["42-00"], ans
        # Tokens that do not parse, alone, with a lease out: once a crash (an
        # uninitialised record freed), now unknown like any other.
        e.publish(mtlib.event("y", type_="job.run"))
        st, out = post(e, "/subscriptions/work/pull?max=10&wait=5s")
        assert st == 200 and len(out) == 1, out
        for op in ("ack", "nack", "extend"):
            st, ans = post(e, "/subscriptions/work/" + op, {"leases": ["nope", ""]})
            assert st == 409 and ans["count"] == 0 and ans["unknown"] == ["nope", ""], (op, ans)
        st, ans = post(e, "/subscriptions/work/ack", {"leases": [out[0]["lease"]]})
        assert st == 200 and ans["count"] == 1, ans


def test_nack_with_delay_then_dead_letter_after_max_attempts():
    with Engine(config=config("    retry: { max_attempts: 2 }\n")) as e:
        e.publish(mtlib.event("n", subject="s-n", type_="job.run"))
        st, items = post(e, "/subscriptions/work/pull")
        st, ans = post(e, "/subscriptions/work/nack", {"leases": [items[0]["lease"]], "delay": "1s"})
        assert st == 200 and ans["count"] == 1, ans
        st, none = post(e, "/subscriptions/work/pull")
        assert none == [], none  # still delayed
        time.sleep(1.1)
        st, items = post(e, "/subscriptions/work/pull?wait=2s")
        assert len(items) == 1 and items[0]["attempt"] == 2, items
        st, ans = post(e, "/subscriptions/work/nack", {"leases": [items[0]["lease"]],
                                                         "error": "price missing"})
        assert st == 200 and ans["count"] == 1, ans
        st, items = post(e, "/subscriptions/work/pull?wait=300ms")
        assert items == [], items  # two attempts used up
        dlq = json.loads(e.request("GET", "/subscriptions/work/dlq")[2])
        assert len(dlq) == 1 and dlq[0]["reason"] == "retries exhausted", dlq
        # A nack's error is that attempt's; one without says nothing.
        assert [(x["attempt"], x["error"]) for x in dlq[0]["errors"]] == [(2, "price missing")], dlq
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        assert s["last_error"].endswith(": price missing"), s
        # Redriven, it can be pulled and acknowledged again.
        assert post(e, "/subscriptions/work/dlq/redrive")[0] == 200
        st, items = post(e, "/subscriptions/work/pull?wait=2s")
        assert len(items) == 1 and items[0]["event"]["id"] == "e-n", items
        st, ans = post(e, "/subscriptions/work/ack", {"leases": [items[0]["lease"]]})
        assert st == 200 and ans["count"] == 1, ans
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        assert s["retrying"] == 0 and s["dlq"] == 0, s


def test_leases_that_run_out_are_failed_attempts_named_in_the_dead_letter():
    # A consumer that takes a message and never answers: each lease that
    # runs out is an attempt, and the dead letter says so for each (it used
    # to list no error at all). With priority the expired lease first
    # rejoins the queue, another path to the same record.
    for extra in ("", "    priority: true\n"):
        cfg = config("    lease: 200ms\n    retry: { max_attempts: 2 }\n" + extra)
        with Engine(config=cfg) as e:
            e.publish(mtlib.event("z", subject="s-z", type_="job.run"))
            for attempt in (1, 2):
                items = []
                deadline = time.monotonic() + 20
                while not items and time.monotonic() < deadline:
                    st, items = post(e, "/subscriptions/work/pull?wait=1s")
                assert len(items) == 1 and items[0]["attempt"] == attempt, (extra, items)
            dlq = []
            deadline = time.monotonic() + 20
            while not dlq and time.monotonic() < deadline:
                assert post(e, "/subscriptions/work/pull?wait=300ms") == (200, [])
                dlq = json.loads(e.request("GET", "/subscriptions/work/dlq")[2])
            assert len(dlq) == 1 and dlq[0]["reason"] == "retries exhausted", (extra, dlq)
            why = "the lease of 200 ms ran out without an ack or a nack"
            assert [(x["attempt"], x["error"]) for x in dlq[0]["errors"]] == [
                (1, why), (2, why)], (extra, dlq)


def test_priority_hands_out_higher_priority_first_in_log_order_within_one():
    with Engine(config=config("    priority: true\n")) as e:
        prios = [1, 9, 5, 9, 0, 5, None, 9]
        for i, p in enumerate(prios):
            ev = mtlib.event("p%d" % i, subject="s%d" % i, type_="job.run")
            if p is not None:
                ev["priority"] = p
            assert e.publish(ev)[0] == 201
        st, items = post(e, "/subscriptions/work/pull?max=100")
        got = [(i["event"]["id"], i["event"].get("priority")) for i in items]
        want = sorted(((("e-p%d" % i), p) for i, p in enumerate(prios)),
                      key=lambda x: -(x[1] or 0))  # stable: log order within a priority
        assert got == want, got
        st, ans = post(e, "/subscriptions/work/ack", {"leases": [i["lease"] for i in items]})
        assert st == 200 and ans["count"] == len(prios), ans
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        assert s["retried"] == 0 and s["retrying"] == 0 and s["handled"] == len(prios), s


def test_held_messages_are_counted_as_retrying_waiting_or_leased():
    with Engine(config=config("    priority: true\n    ordering: subject\n")) as e:
        # Two events on subject a (the second waits behind the first), eight
        # more on subjects of their own: the priority scan queues them all.
        for i in range(2):
            e.publish(mtlib.event("a%d" % i, subject="a", type_="job.run"))
        for i in range(8):
            e.publish(mtlib.event("q%d" % i, subject="q%d" % i, type_="job.run"))
        st, items = post(e, "/subscriptions/work/pull?max=2")
        assert st == 200 and [i["event"]["id"] for i in items] == ["e-a0", "e-q0"], items
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        # 7 queued, 1 blocked, 2 leased: none failed
        assert (s["retrying"], s["waiting"], s["leased"]) == (0, 8, 2), s
        st, ans = post(e, "/subscriptions/work/nack",
                       {"leases": [items[0]["lease"]], "delay": "1h"})
        assert st == 200 and ans["count"] == 1, ans
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        assert (s["retrying"], s["waiting"], s["leased"]) == (1, 8, 1), s


def test_one_subject_is_out_one_event_at_a_time_in_order_and_other_subjects_flow():
    with Engine(config=config("    lease: 30s\n")) as e:
        for i in range(3):
            e.publish(mtlib.event("a%d" % i, subject="a", type_="job.run"))
        e.publish(mtlib.event("b0", subject="b", type_="job.run"))
        e.publish(mtlib.event("n0", type_="job.run"))  # no subject: no order to keep
        st, items = post(e, "/subscriptions/work/pull?max=10")
        assert [i["event"]["id"] for i in items] == ["e-a0", "e-b0", "e-n0"], items
        # a1 waits for a0, even for another consumer.
        st, more = post(e, "/subscriptions/work/pull?max=10")
        assert more == [], more
        # A nack keeps a0 at the head of its subject: it comes back before a1.
        lease = {i["event"]["id"]: i["lease"] for i in items}
        st, ans = post(e, "/subscriptions/work/nack", {"leases": [lease["e-a0"]]})
        assert st == 200 and ans["count"] == 1, ans
        st, again = post(e, "/subscriptions/work/pull?max=10")
        assert [i["event"]["id"] for i in again] == ["e-a0"], again
        assert again[0]["attempt"] == 2
        post(e, "/subscriptions/work/ack", {"leases": [again[0]["lease"], lease["e-b0"]]})
        seen = []
        while len(seen) < 2:
            st, nxt = post(e, "/subscriptions/work/pull?max=10&wait=2s")
            assert st == 200 and len(nxt) == 1, nxt
            seen.append(nxt[0]["event"]["id"])
            post(e, "/subscriptions/work/ack", {"leases": [nxt[0]["lease"]]})
        assert seen == ["e-a1", "e-a2"], seen


def test_with_priority_order_holds_per_subject_within_one_priority():
    with Engine(config=config("    priority: true\n")) as e:
        for i, p in enumerate([1, 1, 7, 7]):
            ev = mtlib.event("x%d" % i, subject="x", type_="job.run", priority=p)
            assert e.publish(ev)[0] == 201
        st, items = post(e, "/subscriptions/work/pull?max=10")
        # One per (subject, priority) lane, the higher priority first.
        assert [i["event"]["id"] for i in items] == ["e-x2", "e-x0"], items
        post(e, "/subscriptions/work/ack", {"leases": [i["lease"] for i in items]})
        st, items = post(e, "/subscriptions/work/pull?max=10&wait=2s")
        assert [i["event"]["id"] for i in items] == ["e-x3", "e-x1"], items


def test_a_paused_pull_subscription_hands_out_nothing_until_resumed():
    with Engine(config=config()) as e:
        assert e.request("POST", "/subscriptions/work/pause")[0] == 200
        e.publish(mtlib.event("q", type_="job.run"))
        st, items = post(e, "/subscriptions/work/pull?max=10&wait=300ms")
        assert st == 200 and items == [], items
        assert e.request("POST", "/subscriptions/work/resume")[0] == 200
        st, items = post(e, "/subscriptions/work/pull?max=10&wait=2s")
        assert [i["event"]["id"] for i in items] == ["e-q"], items


def test_an_abandoned_pull_gives_its_connection_back():
    # A client that closed a waiting pull held its descriptor until the wait
    # ended (up to 60 s): abandoned pulls could use up the open-file limit.
    with Engine(config=config("    lease: 1s\n")) as e:
        mtlib.abandon_waits(e, [b"POST /subscriptions/work/pull?max=1&wait=60s HTTP/1.1\r\n"
                                b"Host: x\r\nContent-Length: 0\r\n\r\n"] * 20)
        # A pull that stays still gets the next event, leased once.
        out = {}
        t = threading.Thread(target=lambda: out.update(
            r=post(e, "/subscriptions/work/pull?max=5&wait=30s")))
        t.start()
        time.sleep(0.3)
        assert e.publish(mtlib.event("after-abandon", type_="job.run"))[0] == 201
        t.join(30)
        st, items = out["r"]
        assert st == 200 and [i["event"]["id"] for i in items] == ["e-after-abandon"], out


def test_bad_pull_requests():
    with Engine(config=config()) as e:
        assert post(e, "/subscriptions/work/pull?max=0x")[0] == 400
        for op, body in (("ack", {"leases": ["1-00"], "error": "x"}),
                         ("nack", {"leases": ["1-00"], "error": 5})):
            st, ans = post(e, "/subscriptions/work/" + op, body)
            assert st == 400 and "'error' is a string, and only for nack" in ans["detail"], ans
        st, body = post(e, "/subscriptions/work/pull?max=0")
        assert st == 400 and "'max' must be a whole number from 1 to 1000" in str(body), body
        assert post(e, "/subscriptions/work/ack", {"leases": "abc"})[0] == 400
        assert post(e, "/subscriptions/work/ack", {"leases": []})[0] == 400
        assert post(e, "/subscriptions/work/ack", {"leases": ["1-00"], "delay": "1s"})[0] == 400
        # Delays past 24h overflowed into "now": the message came straight back.
        for d in ("25h", "106751991167d", "18446744073709551615ms"):
            st, ans = post(e, "/subscriptions/work/nack", {"leases": ["1-00"], "delay": d})
            assert st == 400 and "from 0 to 24h" in ans["detail"], (d, ans)
        st, ans = post(e, "/subscriptions/work/nack", {"leases": ["1-00"], "delay": "24h"})
        assert st == 409 and ans["unknown"] == ["1-00"], ans
        assert post(e, "/subscriptions/nope/pull")[0] == 404
        assert e.request("GET", "/subscriptions/work/pull")[0] == 405


mtlib.main(globals())

"""Delivery controls on subscriptions: expiry (expirytime and ttl, dropped
or dead-lettered), deliverafter embargoes that survive a restart, and
pause/resume that persists."""
import datetime
import json
import os
import tempfile
import time

import mtlib
from mtlib import Engine, wait_for


def config(extra=""):
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nsubscriptions:\n  rec:\n    topics: [\"t.#\"]\n"
                "    handler: tests/lua/handlers/record.lua\n" + extra)
    return path


def rfc3339(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seen(e):
    st, _, body = e.request("GET", "/tables/seen?limit=10000")
    return json.loads(body)


def status(e):
    return json.loads(e.request("GET", "/subscriptions/rec")[2])




def test_expired_events_are_never_delivered_and_are_counted():
    with Engine(config=config()) as e:
        e.publish(mtlib.event("old", type_="t.x", expirytime=rfc3339(time.time() - 60)))
        e.publish(mtlib.event("fresh", type_="t.x", expirytime=rfc3339(time.time() + 3600)))
        e.publish(mtlib.event("plain", type_="t.x"))
        wait_for(lambda: status(e)["lag"] == 0 and len(seen(e)) == 2, what="delivery")
        assert set(seen(e)) == {"e-fresh", "e-plain"}
        s = status(e)
        assert s["expired"] == 1 and s["dlq"] == 0, s


def test_ttl_with_dead_letter_on_expiry():
    with Engine(config=config("    ttl: 300ms\n    on_expiry: dead-letter\n")) as e:
        assert e.request("POST", "/subscriptions/rec/pause")[0] == 200
        for i in range(3):
            e.publish(mtlib.event("t%d" % i, type_="t.x"))
        time.sleep(0.6)  # older than the ttl when delivery resumes
        assert e.request("POST", "/subscriptions/rec/resume")[0] == 200
        wait_for(lambda: status(e)["expired"] == 3, what="3 expiries")
        assert seen(e) == {}
        dlq = json.loads(e.request("GET", "/subscriptions/rec/dlq")[2])
        assert [d["reason"] for d in dlq] == ["expired"] * 3, dlq
        assert status(e)["dead_lettered"] == 0  # an expiry is not a failure
        # A fresh event still flows.
        e.publish(mtlib.event("now", type_="t.x"))
        wait_for(lambda: "e-now" in seen(e), what="a fresh event")
        # Redriven by hand, they are delivered although their ttl has passed:
        # they expired again at once, and with on_expiry: drop were gone.
        st, _, body = e.request("POST", "/subscriptions/rec/dlq/redrive")
        assert st == 200 and json.loads(body)["count"] == 3, body
        wait_for(lambda: len(seen(e)) == 4, what="the redriven events")
        assert status(e)["expired"] == 3 and status(e)["dlq"] == 0, status(e)


def test_a_redriven_pull_message_is_handed_out_past_its_ttl():
    path = mtlib.topology("subscriptions:\n  work:\n    topics: [\"t.#\"]\n    deliver: pull\n"
                          "    ttl: 300ms\n    retry: { max_attempts: 1 }\n")
    with Engine(config=path) as e:
        post = lambda p, b=None: (lambda r: (r[0], json.loads(r[2])))(e.request("POST", p, b))
        e.publish(mtlib.event("p", type_="t.x"))
        st, items = post("/subscriptions/work/pull?wait=5s")
        assert st == 200 and len(items) == 1, items
        assert post("/subscriptions/work/nack", {"leases": [items[0]["lease"]]})[0] == 200
        # The next look dead-letters it (one attempt allowed).
        assert post("/subscriptions/work/pull?wait=200ms") == (200, [])
        assert json.loads(e.request("GET", "/subscriptions/work")[2])["dlq"] == 1
        time.sleep(0.5)  # past the ttl
        assert post("/subscriptions/work/dlq/redrive") == (200, {"count": 1})
        st, items = post("/subscriptions/work/pull?wait=5s")
        assert st == 200 and [i["event"]["id"] for i in items] == ["e-p"], items
        s = json.loads(e.request("GET", "/subscriptions/work")[2])
        assert s["expired"] == 0 and s["dlq"] == 0, s


def test_deliverafter_holds_an_event_until_its_time_across_a_restart():
    cfg = config()
    e = Engine(config=cfg).start()
    try:
        due = time.time() + 2.0
        e.publish(mtlib.event("later", subject="s1", type_="t.x", deliverafter=rfc3339(due)))
        e.publish(mtlib.event("now", subject="s2", type_="t.x"))
        wait_for(lambda: "e-now" in seen(e), what="the undelayed event")
        assert "e-later" not in seen(e)
        assert e.stop() == 0  # usually before the due time: the embargo is in LMDB
        e.start()
        got = wait_for(lambda: "e-later" in seen(e) and time.time(), timeout=30, what="the embargo")
        assert got >= due, "delivered %.3f s early" % (due - got)
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_deliverafter_holds_an_event_that_waited_behind_its_subject():
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    cfg = os.path.join(d, "topology.yaml")
    with open(cfg, "w") as f:
        f.write("version: 1\nsubscriptions:\n  once:\n    topics: [\"t.#\"]\n"
                "    handler: tests/lua/handlers/fail_once.lua\n"
                "    retry: { backoff: 100ms, max_backoff: 100ms }\n"
                "  jobs:\n    topics: [\"t.#\"]\n    deliver: pull\n")
    with Engine(config=cfg) as e:
        due = time.time() + 2.0
        e.publish(mtlib.event("head", subject="s", type_="t.x", data={"fail": True}))
        e.publish(mtlib.event("later", subject="s", type_="t.x", deliverafter=rfc3339(due)))

        def count():
            st, _, body = e.request("GET", "/tables/counts/s")
            return json.loads(body) if st == 200 else 0
        wait_for(lambda: count() >= 1, what="the head's retry")
        # The pull subscription: the head goes out; acked, the next is not yet due.
        st, _, body = e.request("POST", "/subscriptions/jobs/pull?max=10")
        items = json.loads(body)
        assert [i["event"]["id"] for i in items] == ["e-head"], items
        e.request("POST", "/subscriptions/jobs/ack", {"leases": [items[0]["lease"]]})
        st, _, body = e.request("POST", "/subscriptions/jobs/pull?max=10")
        assert json.loads(body) == [] or time.time() >= due, body
        got = wait_for(lambda: count() == 2 and time.time(), timeout=30, what="the embargo")
        assert got >= due, "delivered %.3f s early" % (due - got)
        st, _, body = e.request("POST", "/subscriptions/jobs/pull?max=10&wait=5s")
        items = json.loads(body)
        assert [i["event"]["id"] for i in items] == ["e-later"] and time.time() >= due, items


def test_pause_holds_messages_durably_and_resume_delivers_them():
    cfg = config()
    e = Engine(config=cfg).start()
    try:
        assert e.request("POST", "/subscriptions/rec/pause")[0] == 200
        assert status(e)["paused"] is True
        e.publish(mtlib.event("p1", type_="t.x"))
        time.sleep(0.5)
        assert seen(e) == {} and status(e)["lag"] == 1
        assert e.stop() == 0
        e.start()  # still paused after a restart
        e.publish(mtlib.event("p2", type_="t.x"))
        time.sleep(0.5)
        assert seen(e) == {} and status(e)["paused"] is True
        assert e.request("POST", "/subscriptions/rec/resume")[0] == 200
        wait_for(lambda: set(seen(e)) == {"e-p1", "e-p2"}, what="delivery after resume")
        assert status(e)["paused"] is False
        assert e.request("GET", "/subscriptions/rec/pause")[0] == 405
        assert e.request("POST", "/subscriptions/nope/pause")[0] == 404
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_priority_on_a_handler_subscription_runs_the_highest_first():
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    cfg = os.path.join(d, "topology.yaml")
    with open(cfg, "w") as f:
        f.write("version: 1\nsubscriptions:\n  prio:\n    topics: [\"t.#\"]\n"
                "    handler: tests/lua/handlers/order.lua\n    priority: true\n")
    with Engine(config=cfg) as e:
        assert e.request("POST", "/subscriptions/prio/pause")[0] == 200
        prios = [1, 9, 5, 9, 0, 5, None, 9]
        for i, p in enumerate(prios):
            ev = mtlib.event("p%d" % i, subject="s%d" % i, type_="t.x")
            if p is not None:
                ev["priority"] = p
            assert e.publish(ev)[0] == 201
        # Two of one subject and one priority keep their log order.
        e.publish(mtlib.event("q0", subject="q", type_="t.x", priority=9))
        e.publish(mtlib.event("q1", subject="q", type_="t.x", priority=9))
        assert e.request("POST", "/subscriptions/prio/resume")[0] == 200

        def order():
            st, _, body = e.request("GET", "/tables/order/all")
            return json.loads(body) if st == 200 else []
        wait_for(lambda: len(order()) == len(prios) + 2, what="every event handled")
        want = [x[0] for x in sorted(((("e-p%d" % i), p or 0) for i, p in enumerate(prios)),
                                     key=lambda x: -x[1])]
        want = want[:3] + ["e-q0", "e-q1"] + want[3:]  # log order within priority 9
        assert order() == want, order()


def test_with_priority_a_message_that_falls_due_joins_the_queue_at_its_priority():
    # A retry, an embargo or an expired lease waits at a real due time; the
    # queue sorted before every real time, so once due such a message of
    # priority 9 waited for every queued message of any priority.
    cfg = mtlib.topology("subscriptions:\n  prio:\n    topics: [\"t.#\"]\n"
                         "    handler: tests/lua/handlers/order.lua\n    priority: true\n"
                         "  work:\n    topics: [\"t.#\"]\n    deliver: pull\n    priority: true\n")
    with Engine(config=cfg) as e:
        # The embargoed message is taken in (it waits at its real due time),
        # then the subscriptions pause while 300 of priority 0 come.
        due = time.time() + 2.0
        e.publish(mtlib.event("late", subject="a", type_="t.x", priority=9,
                              deliverafter=rfc3339(due)))
        wait_for(lambda: json.loads(e.request("GET", "/subscriptions/prio")[2])["position"] == 1,
                 what="the embargoed event taken in")
        st, _, body = e.request("POST", "/subscriptions/work/pull?max=5")
        assert st == 200 and json.loads(body) == [], body
        for name in ("prio", "work"):
            assert e.request("POST", "/subscriptions/%s/pause" % name)[0] == 200
        low = [mtlib.event("low%d" % i, subject="s%d" % (i % 50), type_="t.x", priority=0)
               for i in range(300)]
        for i in range(0, 300, 100):
            assert e.publish_batch(low[i:i + 100])[0] == 201
        time.sleep(max(0, due - time.time()) + 0.3)  # the embargo has passed
        for name in ("prio", "work"):
            assert e.request("POST", "/subscriptions/%s/resume" % name)[0] == 200

        def order():
            st, _, body = e.request("GET", "/tables/order/all")
            return json.loads(body) if st == 200 else []
        wait_for(lambda: len(order()) == 301, what="every event handled")
        assert order()[0] == "e-late", order()[:5]
        st, _, body = e.request("POST", "/subscriptions/work/pull?max=5")
        assert st == 200, body
        assert json.loads(body)[0]["event"]["id"] == "e-late", body


def test_ctx_schedule_embargoes_an_emitted_event_from_the_trigger_time():
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    cfg = os.path.join(d, "topology.yaml")
    with open(cfg, "w") as f:
        f.write("version: 1\nsubscriptions:\n"
                "  sched:\n    topics: [\"order.placed\"]\n    handler: tests/lua/handlers/scheduler.lua\n"
                "  rec:\n    topics: [\"t.#\"]\n    handler: tests/lua/handlers/record.lua\n")
    with Engine(config=cfg) as e:
        t0 = time.time()
        e.publish(mtlib.event("o1", subject="order-1", type_="order.placed", time=rfc3339(t0)))
        rem = wait_for(lambda: [ev for ev in e.read_all() if ev["type"] == "t.reminder"],
                       what="the scheduled event in the log")[0]
        assert rem["deliverafter"] == rfc3339(t0 + 1.5)[:23] + rem["deliverafter"][23:], rem
        assert rem["id"] == "sched:1:0" and rem["subject"] == "order-1", rem
        got = wait_for(lambda: "sched:1:0" in seen(e) and time.time(), what="the reminder")
        assert got >= t0 + 1.5, "delivered %.3f s early" % (t0 + 1.5 - got)


def test_ctx_schedule_past_the_year_9999_is_an_error_in_the_handler():
    # Such a time once failed an assertion: the engine stopped, and stopped
    # again at every start, since the event was stored.
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    cfg = os.path.join(d, "topology.yaml")
    with open(cfg, "w") as f:
        f.write("version: 1\nsubscriptions:\n"
                "  far:\n    topics: [\"order.placed\"]\n    handler: tests/lua/handlers/schedule_far.lua\n")
    with Engine(config=cfg) as e:
        e.publish(mtlib.event("o1", subject="order-1", type_="order.placed"))

        def far():
            st, _, body = e.request("GET", "/tables/far?prefix=")
            return json.loads(body) if st == 200 and len(json.loads(body)) == 4 else None
        got = wait_for(far, what="the four schedules tried")
        for i in ("1", "2", "3"):
            assert "past the year 9999" in got[i], got
        assert got["4"] == "ok", got  # a time already past: delivered at once
        late = wait_for(lambda: [ev for ev in e.read_all() if ev["type"] == "t.far"],
                        what="the one scheduled event")
        assert len(late) == 1 and late[0]["data"] == {"i": 4}, late
        # Kept as given (it was moved to the first microsecond of 1970).
        assert late[0]["deliverafter"].startswith("1960-01-01T00:00:00"), late


def test_a_processing_window_that_opens_during_the_test():
    # The window opens 3 s from now (Europe/Paris time) and stays open an hour.
    import zoneinfo
    now = datetime.datetime.now(zoneinfo.ZoneInfo("Europe/Paris"))
    opens = now + datetime.timedelta(seconds=3)
    closes = now + datetime.timedelta(hours=1)
    cfg = config("    window: { from: \"%s\", to: \"%s\", tz: Europe/Paris }\n"
                 % (opens.strftime("%H:%M:%S"), closes.strftime("%H:%M:%S")))
    with Engine(config=cfg) as e:
        e.publish(mtlib.event("w1", type_="t.x"))
        time.sleep(1.0)
        if time.time() < opens.timestamp() - 0.5:
            assert seen(e) == {}, "delivered outside the window"
        got = wait_for(lambda: "e-w1" in seen(e) and time.time(), what="the window to open")
        assert got >= opens.timestamp() - 1.0, "delivered %.2f s before the window opened" % (
            opens.timestamp() - got)


def test_a_window_holds_pull_consumers_too():
    # The window applied to handlers only: a pull (or a webhook, which pulls
    # the same way) was handed events while it was closed. One window closed
    # for the next hour, one open for the hour around now.
    import zoneinfo
    now = datetime.datetime.now(zoneinfo.ZoneInfo("Europe/Paris"))
    hm = lambda t: t.strftime("%H:%M")
    h = datetime.timedelta(hours=1)
    path = mtlib.topology("subscriptions:\n" + "".join(
        "  %s:\n    topics: [\"t.#\"]\n    deliver: pull\n"
        "    window: { from: \"%s\", to: \"%s\", tz: Europe/Paris }\n" % (name, hm(a), hm(b))
        for name, (a, b) in (("closed", (now + h, now + 2 * h)), ("open", (now - h, now + h)))))
    with Engine(config=path) as e:
        pull = lambda n, w: json.loads(e.request("POST", "/subscriptions/%s/pull?wait=%s" % (n, w))[2])
        e.publish(mtlib.event("w1", type_="t.x"))
        assert [i["event"]["id"] for i in pull("open", "5s")] == ["e-w1"]
        assert pull("closed", "500ms") == [], "handed out outside the window"


def test_bad_windows_are_configuration_errors():
    cfg = config("    window: { from: \"25:00\", to: \"06:00\", tz: Mars/Olympus }\n")
    rc, _, err = mtlib.run_cli("check", "-c", cfg)
    assert rc == 78, err
    assert "window.from" in err and "Mars/Olympus" in err, err


mtlib.main(globals())

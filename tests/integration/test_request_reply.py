"""Request/reply: POST /events?wait=reply holds the request until an event
of the replyto type correlated to the request's id arrives (a Lua handler
answers with ctx.reply), or answers 504 when the timeout passes."""
import json
import os
import shutil
import tempfile
import threading
import time

import mtlib
from mtlib import Engine


def config():
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nsubscriptions:\n  quotes:\n    topics: [\"quote.requested\"]\n"
                "    handler: tests/lua/handlers/quote.lua\n")
    return path


def ask(e, ev, timeout="5s"):
    st, _, body = e.request("POST", "/events?wait=reply&timeout=" + timeout, ev,
                            {"Content-Type": "application/cloudevents+json"})
    return st, json.loads(body)


def test_round_trip_through_a_lua_handler():
    with Engine(config=config()) as e:
        st, rep = ask(e, mtlib.event("q1", subject="cart-1", type_="quote.requested",
                                     replyto="quote.given", data={"qty": 6, "item": "nut"}))
        assert st == 200, rep
        assert rep["type"] == "quote.given" and rep["correlationid"] == "e-q1", rep
        assert rep["causationid"] == "e-q1" and rep["data"] == {"price": 42, "item": "nut"}, rep
        # Many callers at once each get their own answer.
        out = {}

        def one(i):
            out[i] = ask(e, mtlib.event("m%d" % i, type_="quote.requested", replyto="quote.given",
                                        data={"qty": i, "item": "x"}))

        ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        for i in range(20):
            st, rep = out[i]
            assert st == 200 and rep["correlationid"] == "e-m%d" % i and rep["data"]["price"] == 7 * i, rep


def test_timeout_and_bad_requests():
    with Engine(config=config()) as e:
        st, ans = ask(e, mtlib.event("n1", type_="nobody.listens", replyto="never.answered"),
                      timeout="300ms")
        assert st == 504 and ans["error"] == "reply timeout", ans
        # The request itself was stored.
        assert any(ev["id"] == "e-n1" for ev in e.read_all())
        st, ans = ask(e, mtlib.event("n2", type_="quote.requested", data={"qty": 1}))
        assert st == 400 and "replyto" in ans["detail"], ans
        st, ans = ask(e, mtlib.event("n3", type_="quote.requested", replyto="q.g"), timeout="forever")
        assert st == 400 and "timeout" in ans["detail"], ans
        st, _, body = e.request("POST", "/events?wait=later", mtlib.event("n4", type_="a.b"),
                                {"Content-Type": "application/cloudevents+json"})
        assert st == 400, body
        # A handler reply to an event without replyto is an error in the handler.
        st, _ = e.publish(mtlib.event("n5", type_="quote.requested", data={"qty": 1}))
        assert st == 201




def test_a_reply_goes_to_its_own_request_when_two_share_an_id():
    # Events are (source, id); a correlation id is only the id. Two requests
    # of one id from two sources both took the first reply.
    with Engine(config=config()) as e:
        out = {}
        b = mtlib.event("same", source="/b", type_="quote.requested", replyto="quote.given",
                        data={"qty": 1, "item": "b", "silent": True})
        t = threading.Thread(target=lambda: out.update(b=ask(e, b, timeout="2s")))
        t.start()
        mtlib.wait_for(lambda: len(e.read_all()) == 1, what="b's request stored")
        st, rep = ask(e, mtlib.event("same", source="/a", type_="quote.requested",
                                     replyto="quote.given", data={"qty": 2, "item": "a"}))
        assert st == 200 and rep["data"] == {"price": 14, "item": "a"}, rep
        t.join(30)
        assert out["b"][0] == 504, out["b"]


def test_a_reply_from_further_down_a_chain_of_handlers_answers():
    # The request's handler emits a step; another handler answers the step
    # with the reply type. The step inherits the request's correlationid.
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    try:
        for name, body in (("step.lua", "return function(e, ctx) ctx.emit('quote.step', e.data) end\n"),
                           ("answer.lua", "return function(e, ctx)\n"
                            "  ctx.emit('quote.given', {price = e.data.qty * 3})\nend\n")):
            with open(os.path.join(d, name), "w") as f:
                f.write(body)
        cfg = os.path.join(d, "topology.yaml")
        with open(cfg, "w") as f:
            f.write("version: 1\nsubscriptions:\n"
                    "  first:\n    topics: [\"quote.requested\"]\n    handler: %s/step.lua\n"
                    "  second:\n    topics: [\"quote.step\"]\n    handler: %s/answer.lua\n" % (d, d))
        with Engine(config=cfg) as e:
            st, rep = ask(e, mtlib.event("chain", type_="quote.requested", replyto="quote.given",
                                         data={"qty": 5}))
            assert st == 200 and rep["data"] == {"price": 15}, rep
            assert rep["correlationid"] == "e-chain" and rep["source"].endswith("/second"), rep
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_abandoned_request_gives_its_connection_back():
    # A caller that gave up on its reply held the engine's descriptor until
    # the timeout (up to 60 s).
    with Engine(config=config()) as e:
        requests = []
        for i in range(20):
            body = json.dumps(mtlib.event("gone-%d" % i, type_="nobody.listens",
                                          replyto="never.answered")).encode()
            requests.append(b"POST /events?wait=reply&timeout=60s HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/cloudevents+json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        mtlib.abandon_waits(e, requests, stored=lambda: len(e.read_all()) == 20)
        # A caller that stays still gets its reply.
        st, rep = ask(e, mtlib.event("q-after", type_="quote.requested", replyto="quote.given",
                                     data={"qty": 2, "item": "bolt"}))
        assert st == 200 and rep["data"] == {"price": 14, "item": "bolt"}, rep


def test_requests_waiting_when_the_engine_stops_are_answered_503():
    # A request appended as the engine stopped (the store runs its last
    # jobs then) began its wait after the waits had been answered: its
    # connection was dropped with no answer, and its waiter leaked.
    stored_in_all = 0
    for pause in (0, 0.05, 0.1):
        d = tempfile.mkdtemp(prefix="moontide-it-rr-")
        try:
            e = Engine(data_dir=d, config=config()).start()
            out = {}

            def one(i):
                try:
                    out[i] = ask(e, mtlib.event("s%d" % i, type_="nobody.listens",
                                                replyto="never.answered"), timeout="30s")[0]
                except Exception as x:  # never got in, or dropped: the log tells which
                    out[i] = repr(x)

            ts = [threading.Thread(target=one, args=(i,)) for i in range(150)]
            for t in ts:
                t.start()
            time.sleep(pause)
            assert e.stop() == 0, e.stderr_lines[-5:]
            for t in ts:
                t.join(30)
            with Engine(data_dir=d) as e2:
                stored = [int(x["id"][3:]) for x in e2.read_all()]
            stored_in_all += len(stored)
            dropped = [(i, out.get(i)) for i in stored if out.get(i) != 503]
            assert not dropped, dropped[:3]
        finally:
            shutil.rmtree(d, ignore_errors=True)
    assert stored_in_all, "no request was stored before a stop"


mtlib.main(globals())

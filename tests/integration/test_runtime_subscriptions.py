"""Subscriptions made at runtime: PUT /subscriptions/{name} creates or
replaces one from a JSON definition, DELETE removes it with its state; both
survive restarts, and the topology file's own subscriptions win at start."""
import http.server
import json
import os
import shutil
import tempfile
import threading
import time

import mtlib

COUNTER = """
return function(event, ctx)
  local t = ctx.kv("counts")
  t:put(event.subject, (t:get(event.subject) or 0) + 1)
end
"""


# The engines of this module run in a project directory of their own: over
# HTTP a subscription may only name a handler file under the engine's working
# directory, by a relative path.
PROJECT = tempfile.mkdtemp(prefix="moontide-project-")


def handler_file(text=COUNTER):
    """Writes a handler into the project; its path relative to the project."""
    d = tempfile.mkdtemp(prefix="h-", dir=PROJECT)
    path = os.path.join(os.path.basename(d), "counter.lua")
    with open(os.path.join(PROJECT, path), "w") as f:
        f.write(text)
    return path


def Engine(**kw):
    return mtlib.Engine(cwd=PROJECT, **kw)


def put(e, name, definition, raw=None, headers=None):
    body = raw if raw is not None else json.dumps(definition)
    h = {"Content-Type": "application/json"} if headers is None else headers
    st, _, data = e.request("PUT", "/subscriptions/" + name, body, h)
    return st, json.loads(data) if data else None


def status(e, name):
    st, _, data = e.request("GET", "/subscriptions/" + name)
    return st, json.loads(data)


def count(e, key):
    st, _, data = e.request("GET", "/tables/counts/" + key)
    return json.loads(data) if st == 200 else None


def test_put_creates_a_subscription_that_delivers_and_survives_a_restart():
    e = Engine()
    try:
        e.start()
        for i in range(5):
            e.publish(mtlib.event("a%d" % i, subject="s%d" % (i % 2), type_="order.placed"))
        h = handler_file()
        st, body = put(e, "counter", {"topics": ["order.*"], "handler": h, "start": "beginning"})
        assert st == 201, body
        assert body["name"] == "counter" and body["origin"] == "api", body
        assert body["definition"]["handler"] == h, body
        mtlib.wait_for(lambda: status(e, "counter")[1]["handled"] == 5, what="5 handled")
        assert count(e, "s0") == 3 and count(e, "s1") == 2
        names = [s["name"] for s in json.loads(e.request("GET", "/subscriptions")[2])]
        assert names == ["counter"], names
        e.stop()
        e.start()
        st, s = status(e, "counter")
        assert st == 200 and s["origin"] == "api" and s["position"] == 5, s
        e.publish(mtlib.event("b", subject="s0", type_="order.placed"))
        mtlib.wait_for(lambda: count(e, "s0") == 4, what="delivery after the restart")
    finally:
        e.cleanup()


def test_one_handler_file_serves_two_subscriptions_that_know_their_names():
    h = handler_file("return function(event, ctx) ctx.kv('who'):put(ctx.subscription, event.id) end")
    with Engine() as e:
        assert put(e, "first", {"topics": ["n.#"], "handler": h})[0] == 201
        assert put(e, "second", {"topics": ["n.#"], "handler": h, "workers": 2})[0] == 201
        e.publish(mtlib.event("n1", type_="n.x"))
        got = mtlib.wait_for(lambda: len(json.loads(e.request("GET", "/tables/who")[2])) == 2 and
                             json.loads(e.request("GET", "/tables/who")[2]), what="both")
        assert got == {"first": "e-n1", "second": "e-n1"}, got


def test_put_replaces_a_subscription_and_keeps_its_position():
    with Engine() as e:
        h = handler_file()
        assert put(e, "counter", {"topics": ["order.*"], "handler": h})[0] == 201
        e.publish(mtlib.event("a", subject="x-1", type_="order.placed"))
        mtlib.wait_for(lambda: count(e, "x-1") == 1, what="first delivery")
        # The new definition adds a filter: only subjects starting with "y-" now.
        st, body = put(e, "counter", {"topics": ["order.*"], "handler": h,
                                      "filter": {"prefix": {"subject": "y-"}}})
        assert st == 200, body
        assert body["position"] == 1, body
        e.publish(mtlib.event("b", subject="x-1", type_="order.placed"))
        e.publish(mtlib.event("c", subject="y-1", type_="order.placed"))
        mtlib.wait_for(lambda: count(e, "y-1") == 1, what="filtered delivery")
        mtlib.wait_for(lambda: status(e, "counter")[1]["position"] == 3, what="position 3")
        assert count(e, "x-1") == 1, "the old definition's topics still deliver"


def test_delete_removes_the_subscription_and_its_state_for_good():
    e = Engine()
    try:
        e.start()
        fail = handler_file("return function(event, ctx) error('no') end")
        st, _ = put(e, "doomed", {"topics": ["#"], "handler": fail,
                                  "retry": {"max_attempts": 1}})
        assert st == 201
        e.publish(mtlib.event("a", type_="t.x"))
        mtlib.wait_for(lambda: status(e, "doomed")[1]["dlq"] == 1, what="a dead letter")
        st, _, data = e.request("DELETE", "/subscriptions/doomed")
        assert st == 204 and data == b"", (st, data)
        assert status(e, "doomed")[0] == 404
        st, _, data = e.request("DELETE", "/subscriptions/doomed")
        assert st == 404, data
        e.stop()
        e.start()
        assert status(e, "doomed")[0] == 404
        # Made again, it starts afresh: from its start, with no old dead letters.
        st, body = put(e, "doomed", {"topics": ["#"], "deliver": "pull", "start": "end"})
        assert st == 201, body
        assert body["dlq"] == 0 and body["position"] == 1 and body["handled"] == 0, body
    finally:
        e.cleanup()


def test_a_put_or_delete_ends_the_trial_of_a_reload():
    # A reload's trial load of a stuck handler ran on for its whole
    # limits.time after the subscription was replaced or deleted.
    import signal
    e = Engine()
    try:
        e.start()
        h = handler_file()
        for name in ("replaced", "deleted"):
            assert put(e, name, {"topics": ["#"], "handler": h, "limits": {"time": "1h"}})[0] == 201
        with open(os.path.join(PROJECT, h), "w") as f:
            f.write("local _ = ('a'):rep(3000):find(('a*'):rep(12) .. 'b')\n" + COUNTER)

        def trials():
            return [pid for pid, cmdline in mtlib.children(e.proc.pid)
                    if cmdline[1:3] == ["check", "--handler"] and mtlib.alive(pid)]
        e.proc.send_signal(signal.SIGHUP)
        first = mtlib.wait_for(lambda: len(trials()) == 2 and trials(), what="two trial loads")
        with open(os.path.join(PROJECT, h), "w") as f:
            f.write(COUNTER)
        assert put(e, "replaced", {"topics": ["#"], "handler": h})[0] == 200
        st, _, _ = e.request("DELETE", "/subscriptions/deleted")
        assert st == 204
        mtlib.wait_for(lambda: not any(mtlib.alive(pid) for pid in first),
                       what="the trials ended")
        for name in ("replaced", "deleted"):
            assert any("subscription '%s': handler not reloaded: the subscription is being "
                       "changed or deleted" % name in line for line in e.stderr_lines), name
        e.publish(mtlib.event("a", subject="s", type_="t.x"))
        mtlib.wait_for(lambda: count(e, "s") == 1, what="the replaced subscription's handler")
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_a_handler_path_that_is_a_fifo_is_refused_without_holding_the_engine():
    # The handler was opened blocking on the loop thread: a PUT naming a
    # FIFO held every request of the engine for good.
    e = Engine()
    try:
        e.start()
        d = tempfile.mkdtemp(prefix="h-", dir=PROJECT)
        os.mkfifo(os.path.join(d, "fifo.lua"))
        st, body = put(e, "f", {"topics": ["#"],
                                "handler": os.path.join(os.path.basename(d), "fifo.lua")})
        assert st == 400 and "not a regular file" in json.dumps(body), (st, body)
        assert status(e, "f")[0] == 404
    finally:
        e.cleanup()


def test_a_subscription_made_again_emits_events_of_its_own():
    # Emitted ids are derived from the name, the trigger and the position;
    # the log keeps every id it has seen, so a subscription deleted and made
    # again under the same name, which starts afresh, once had its emits
    # answered with its predecessor's events and appended nothing.
    e = Engine()
    try:
        e.start()
        emitter = handler_file("""
return function(event, ctx)
  ctx.emit("out.made", { by = ctx.kv("cfg"):get("who") or "first" })
end
""")
        st, _ = put(e, "again", {"topics": ["in.#"], "handler": emitter})
        assert st == 201
        e.publish(mtlib.event("a", type_="in.x"))
        outs = lambda: [ev for ev in e.read_all() if ev["type"] == "out.made"]
        first = mtlib.wait_for(lambda: len(outs()) == 1 and outs(), what="the first emit")
        assert first[0]["id"] == "again:1:0", first
        assert e.request("DELETE", "/subscriptions/again")[0] == 204
        st, _ = put(e, "again", {"topics": ["in.#"], "handler": emitter})
        assert st == 201
        both = mtlib.wait_for(lambda: len(outs()) == 2 and outs(), what="the second one's emit")
        assert both[1]["id"] == "again~1:1:0" and both[1]["causationid"] == "e-a", both
        e.stop()
        e.start()  # the incarnation is read back after a restart
        e.publish(mtlib.event("b", type_="in.x"))
        three = mtlib.wait_for(lambda: len(outs()) == 3 and outs(), what="an emit after the restart")
        assert three[2]["id"].startswith("again~1:"), three
    finally:
        e.cleanup()


def test_a_stored_definition_that_did_not_load_keeps_its_state_until_deleted():
    """A definition made over HTTP whose handler file is gone at start does
    not run, but it still exists: a PUT replaces it and keeps its position
    and dead letters, under the same rules as a running one; a DELETE drops
    it and its state."""
    e = Engine()
    try:
        e.start()
        fail = handler_file("return function(event, ctx) error('no') end")
        for name, topic in (("keeper", "k.#"), ("gone", "g.#")):
            st, body = put(e, name, {"topics": [topic], "handler": fail,
                                     "retry": {"max_attempts": 1}})
            assert st == 201, body
        e.publish(mtlib.event("k1", subject="a", type_="k.x"))
        e.publish(mtlib.event("k2", subject="b", type_="k.x"))
        e.publish(mtlib.event("g1", type_="g.x"))
        mtlib.wait_for(lambda: status(e, "keeper")[1]["dlq"] == 2, what="keeper's dead letters")
        mtlib.wait_for(lambda: status(e, "gone")[1]["dlq"] == 1, what="gone's dead letter")
        e.stop()
        os.remove(os.path.join(PROJECT, fail))
        e.start()
        for name in ("keeper", "gone"):
            assert any("'%s' (made over HTTP) is not started" % name in l
                       for l in e.stderr_lines), e.stderr_lines
        # Listed as not running, with why, its state and its definition.
        st, s = status(e, "keeper")
        assert st == 200 and s["running"] is False, s
        assert "cannot read '%s'" % fail in s["not_started"], s
        assert s["position"] == 3 and s["dlq"] == 2 and s["topics"] == ["k.#"], s
        assert s["definition"]["handler"] == fail and s["origin"] == "api", s
        listed = json.loads(e.request("GET", "/subscriptions")[2])
        assert sorted((x["name"], x["running"]) for x in listed) == [("gone", False),
                                                                     ("keeper", False)]
        st, _, data = e.request("GET", "/subscriptions/keeper/dlq")
        assert st == 200 and len(json.loads(data)) == 2, data
        for path in ("/dlq/redrive", "/pause", "/resume"):
            st, _, data = e.request("POST", "/subscriptions/keeper" + path)
            assert st == 409 and b"did not start" in data, (path, data)

        # What may not change on a running subscription may not change here either.
        st, body = put(e, "keeper", {"topics": ["k.#"], "ordering": "strict",
                                     "handler": handler_file()})
        assert st == 409 and "ordering cannot change" in body["detail"], body
        st, body = put(e, "keeper", {"topics": ["k.#"], "deliver": "pull"})
        assert st == 409 and "delivery cannot change" in body["detail"], body

        # A fixed handler takes over where the old one stopped, dead letters kept.
        st, body = put(e, "keeper", {"topics": ["k.#"], "handler": handler_file()})
        assert st == 200, body
        assert body["position"] == 3 and body["dlq"] == 2 and body["running"] is True, body
        assert "not_started" not in body, body
        st, _, data = e.request("POST", "/subscriptions/keeper/dlq/redrive")
        assert st == 200, data
        mtlib.wait_for(lambda: count(e, "a") == 1 and count(e, "b") == 1, what="redriven")

        # DELETE finds the dormant one and drops its state with it.
        st, _, data = e.request("DELETE", "/subscriptions/gone")
        assert st == 204, data
        assert e.request("DELETE", "/subscriptions/gone")[0] == 404
        assert status(e, "gone")[0] == 404
        e.stop()
        e.start()
        assert not any("'gone'" in l for l in e.stderr_lines), e.stderr_lines
        st, body = put(e, "gone", {"topics": ["g.#"], "deliver": "pull", "start": "beginning"})
        assert st == 201 and body["dlq"] == 0, body
        assert status(e, "keeper")[1]["dlq"] == 0
    finally:
        e.cleanup()


def test_a_put_in_flight_when_the_engine_stops_is_answered_and_the_stop_is_clean():
    # The PUT's writer job ended while the store closed, after the HTTP side
    # had let go of it: its answer read the status from a NULL store (SIGSEGV).
    import signal
    import socket
    for i in range(12):
        e = Engine().start()
        try:
            body = json.dumps({"topics": ["a.#"], "deliver": "pull"}).encode()
            s = socket.create_connection(("127.0.0.1", e.port))
            s.sendall(b"PUT /subscriptions/x%d HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (i, len(body), body))
            time.sleep((i % 6) * 0.0005)
            e.proc.send_signal(signal.SIGTERM)
            rc = e.proc.wait(60)
            s.settimeout(10)
            try:
                answer = s.recv(200).split(b"\r\n")[0]
            except OSError:  # reset: the stop came before the request was read
                answer = b""
            s.close()
            assert rc == 0, (i, rc, e.stderr_lines[-5:])
            # Answered if it was read at all: made (201) or refused as the engine stops (503).
            assert answer in (b"", b"HTTP/1.1 201 Created", b"HTTP/1.1 503 Service Unavailable"), answer
            e.proc = None
        finally:
            e.cleanup()


HITS = """
return function(event, ctx)
  local t = ctx.kv("counts")
  t:put(event.id, (t:get(event.id) or 0) + 1)
end
"""


def test_json_definitions_mean_what_the_json_says():
    """A PUT body is read as the JSON it is: null is not "null", a number
    is not the text "5", and every valid string arrives unchanged."""
    with Engine() as e:
        h = handler_file(HITS)
        for bad, why in [
            ({"exact": {"subject": None}}, "'subscriptions.s.filter': exact.subject: null is not"),
            (None, "'subscriptions.s.filter' must be a filter mapping"),
            ({"all": [{"exact": {"subject": "a"}}, {"prefix": {"subject": 5}}]}, None),
        ]:
            st, b = put(e, "s", {"topics": ["t"], "handler": h, "filter": bad})
            if why is None:
                assert st == 201, b  # a number stands for its text, "5"
                assert e.request("DELETE", "/subscriptions/s")[0] in (200, 204)
                continue
            assert st == 400 and why in b["detail"], (bad, b)
        for topics, why in [([5], "not a number (got 5;"), ([True], "not a boolean (got true;"),
                            (7, "not a number (got 7;")]:
            st, b = put(e, "s", {"topics": topics, "handler": h})
            assert st == 400 and b["detail"].startswith("request:/topics") and why in b["detail"], b
        # Numbers and booleans in a filter stand for the text the same JSON value has as
        # data: 1e3 is a real, 1000.0, so it matches 1000.0 and not the integer 1000.
        st, b = put(e, "numbers", None, raw='{"topics": ["t"], "handler": "%s", "filter": {"any": ['
                    '{"exact": {"priority": 5}}, {"exact": {"data.n": 1e3}}, '
                    '{"exact": {"data.b": true}}]}}' % h)
        assert st == 201, b
        # Python's json.dumps writes U+1F600 as a surrogate pair; the rest go raw.
        long_key = "k" * 1100
        subjects = ["\U0001F600", "a\x7fb", "a\x85b", "a\ufffeb"]
        texts = {"topics": ["t"], "handler": h, "filter": {"any": [
            {"exact": {"subject": s}} for s in subjects] + [{"exact": {"data." + long_key: "v"}}]}}
        raw = json.dumps(texts, ensure_ascii=False).replace("\U0001F600", "\\ud83d\\ude00")
        assert "\\ud83d\\ude00" in raw and "\x85" in raw
        st, b = put(e, "texts", None, raw=raw)
        assert st == 201, b
        misses = [mtlib.event("miss-n", type_="t", data={"n": 1000}),
                  mtlib.event("miss-p", type_="t", priority=4),
                  mtlib.event("miss-s", type_="t", subject="a\x85", data={long_key: "w"})]
        hits = [mtlib.event("hit-n", type_="t", data={"n": 1000.0}),
                mtlib.event("hit-b", type_="t", data={"b": True}),
                mtlib.event("hit-bs", type_="t", data={"b": "true"}),
                mtlib.event("hit-p", type_="t", priority=5),
                mtlib.event("hit-long", type_="t", data={long_key: "v"})]
        hits += [mtlib.event("hit-s%d" % i, type_="t", subject=s) for i, s in enumerate(subjects)]
        for ev in misses + hits:
            st, b = e.publish(ev)
            assert st == 201, (ev, b)
        for ev in hits:
            mtlib.wait_for(lambda: count(e, ev["id"]), what=ev["id"])
        want = {ev["id"]: 1 for ev in hits}
        want.update({ev["id"]: None for ev in misses})
        got = {ev["id"]: count(e, ev["id"]) for ev in misses + hits}
        assert got == want, got
        # A NUL can only be in JSON data, so a filter may look for one there
        # and nowhere else; the definition keeps it across a restart.
        st, b = put(e, "nul", {"topics": ["t"], "handler": h,
                               "filter": {"exact": {"subject": "a\u0000b"}}})
        assert st == 400 and "holds a NUL byte" in b["detail"], b
        st, b = put(e, "nul", {"topics": ["t"], "handler": h,
                               "filter": {"exact": {"data.x": "a\u0000b"}}})
        assert st == 201, b
        e.stop()
        e.start()
        st, b = status(e, "nul")
        assert st == 200 and b["running"], b
        assert b["definition"]["filter"] == {"exact": {"data.x": "a\u0000b"}}, b
        for ev in [mtlib.event("nul-miss", type_="t", data={"x": "a"}),
                   mtlib.event("nul-hit", type_="t", data={"x": "a\u0000b"})]:
            st, b = e.publish(ev)
            assert st == 201, (ev, b)
        mtlib.wait_for(lambda: count(e, "e-nul-hit") == 1, what="nul-hit")
        assert count(e, "e-nul-miss") is None


def test_bad_definitions_get_clear_errors_and_change_nothing():
    cfg = mtlib.topology("subscriptions:\n  declared:\n    topics: [\"a.#\"]\n    deliver: pull\n")
    with Engine(config=cfg) as e:
        st, b = put(e, "s", None, raw='{"topics": ["a.b"],')
        assert st == 400 and b["detail"].startswith("request:1:") and "invalid JSON" in b["detail"], b
        st, b = put(e, "s", None, raw='["a"]')
        assert st == 400 and "must be a JSON object" in b["detail"], b
        st, b = put(e, "s", {"topics": ["a.b"], "deliver": "pull", "colour": "red"})
        assert st == 400 and "unknown key 'colour'" in b["detail"], b
        assert b["detail"].startswith("request:/colour: error:"), b
        st, b = put(e, "s", None, raw='{\n\t"deliver": "pull",\n\t"lease": "soon"\n}')
        assert st == 400, b
        assert b["errors"][0].startswith("request: error: missing required key 'topics'"), b
        assert b["errors"][1].startswith("request:/lease: error: 'subscriptions.s.lease'"), b
        st, b = put(e, "s", {"topics": ["a.b"], "handler": "nonexistent/h.lua"})
        assert st == 400 and "cannot read 'nonexistent/h.lua'" in b["detail"], b
        # Only the project's own files: not a file elsewhere on the host, even one
        # that exists and reads, and not one reached with "..".
        outside = os.path.join(os.path.dirname(PROJECT), "outside.lua")
        with open(outside, "w") as f:
            f.write(COUNTER)
        try:
            for path in (outside, "../outside.lua", handler_file() + "/../../../outside.lua"):
                st, b = put(e, "s", {"topics": ["a.b"], "handler": path})
                assert st == 400 and b["detail"] == (
                    "request:/handler: error: 'subscriptions.s.handler': '%s' is outside the "
                    "engine's working directory: a subscription made over HTTP names its "
                    "handler by a relative path without '..' (handlers/NAME.lua)" % path), b
        finally:
            os.remove(outside)
        broken = handler_file("return function(event, ctx) end end")
        st, b = put(e, "s", {"topics": ["a.b"], "handler": broken})
        assert st == 400 and "counter.lua" in b["detail"], b
        # A webhook that could never be called is refused, not stored: a URL
        # libevent cannot parse crashed the engine, then every start after.
        for url, why in (("http://127.0.0.1:99999/x", "cannot parse"),
                         ("http://exa mple.com/x", "cannot parse"),
                         ("http://[::1/x", "cannot parse"), ("http:///ok", "names no host"),
                         ("http://h:0/x", "port 0")):
            st, b = put(e, "s", {"topics": ["a.b"], "deliver": {"webhook": {"url": url}}})
            assert st == 400 and why in b["detail"] and "deliver.webhook.url" in b["detail"], b
        for secret in ("whsec_!!!!!!!!", "whsec_abcde", "whsec_", "secret"):
            st, b = put(e, "s", {"topics": ["a.b"], "deliver": {"webhook": {
                "url": "http://127.0.0.1:9/h", "secret": secret}}})
            assert st == 400 and "whsec_<base64>" in b["detail"], b
        st, b = put(e, "bad%20name", {"topics": ["a.b"], "deliver": "pull"})
        assert st == 400 and "subscription name" in b["detail"], b
        st, b = put(e, "s", {"topics": ["a.b"], "deliver": "pull"},
                     headers={"Content-Type": "text/plain"})
        assert st == 415, b
        st, b = put(e, "declared", {"topics": ["a.b"], "deliver": "pull"})
        assert st == 409 and "declared in" in b["detail"], b
        st, _, data = e.request("DELETE", "/subscriptions/declared")
        assert st == 409 and "declared in" in json.loads(data)["detail"], data
        st, _, data = e.request("POST", "/subscriptions/declared")
        assert st == 405, data
        names = [s["name"] for s in json.loads(e.request("GET", "/subscriptions")[2])]
        assert names == ["declared"], names
        # What cannot change on a live subscription.
        assert put(e, "p", {"topics": ["a.b"], "deliver": "pull"})[0] == 201
        st, b = put(e, "p", {"topics": ["a.b"], "handler": handler_file()})
        assert st == 409 and "delivery cannot change" in b["detail"], b
        st, b = put(e, "p", {"topics": ["a.b"], "deliver": "pull", "ordering": "strict"})
        assert st == 409 and "ordering cannot change" in b["detail"], b
        st, b = put(e, "p", {"topics": ["a.b"], "deliver": "pull", "priority": True})
        assert st == 409 and "priority cannot change" in b["detail"], b
        assert status(e, "p")[1]["definition"] == {"topics": ["a.b"], "deliver": "pull"}


def test_the_topology_file_wins_over_a_stored_definition_of_the_same_name():
    e = Engine()
    try:
        e.start()
        assert put(e, "shared", {"topics": ["x.#"], "deliver": "pull"})[0] == 201
        e.stop()
        e.config = mtlib.topology("subscriptions:\n  shared:\n    topics: [\"y.#\"]\n"
                                  "    deliver: pull\n")
        e.start()
        st, s = status(e, "shared")
        assert st == 200 and s["origin"] == "config" and s["topics"] == ["y.#"], s
        assert any("is declared in" in l for l in e.stderr_lines), e.stderr_lines
    finally:
        e.cleanup()


def test_a_webhook_made_at_runtime_delivers_and_stops_when_deleted():
    got = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body)["id"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with Engine() as e:
            url = "http://127.0.0.1:%d/hook" % srv.server_address[1]
            st, b = put(e, "hook", {"topics": ["w.#"], "deliver": {"webhook": {"url": url}}})
            assert st == 201, b
            for i in range(3):
                e.publish(mtlib.event("w%d" % i, subject="s", type_="w.x"))
            mtlib.wait_for(lambda: len(got) == 3, what="3 webhook deliveries")
            assert got == ["e-w0", "e-w1", "e-w2"], got
            assert e.request("DELETE", "/subscriptions/hook")[0] == 204
            e.publish(mtlib.event("w9", subject="s", type_="w.x"))
            # A pull subscription made now sees the event: the webhook is gone.
            assert put(e, "probe", {"topics": ["w.#"], "deliver": "pull",
                                     "ordering": "none"})[0] == 201
            st, _, data = e.request("POST", "/subscriptions/probe/pull?max=10&wait=1s")
            assert st == 200 and len(json.loads(data)) == 4, data
            assert "e-w9" not in got, got
    finally:
        srv.shutdown()


if __name__ == "__main__":
    try:
        mtlib.main(globals())
    finally:
        shutil.rmtree(PROJECT, ignore_errors=True)

"""Server-Sent Events over GET /subscribe: catch-up then live, resume from
Last-Event-ID without gap or duplicate, bad input, and a client that never
reads does not stop the engine serving others."""
import http.client
import json
import socket
import time

import mtlib
from mtlib import Engine


def open_stream(e, query, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=20)
    c.request("GET", "/subscribe?" + query, headers=headers or {})
    r = c.getresponse()
    return c, r


def read_events(r, n):
    """Reads n SSE events; returns [(id, event, data-dict)]."""
    out = []
    cur = {}
    while len(out) < n:
        line = r.readline().decode()
        assert line, "stream ended after %d events" % len(out)
        line = line.rstrip("\n")
        if line.startswith(":"):
            continue
        if line == "":
            if cur:
                out.append((cur["id"], cur["event"], json.loads(cur["data"])))
                cur = {}
            continue
        k, _, v = line.partition(": ")
        cur[k] = v
    return out


def test_catch_up_then_live_with_topic_patterns():
    with Engine() as e:
        for i, t in enumerate(["order.placed", "stock.moved", "order.paid", "order.eu.placed"]):
            e.publish(mtlib.event("c%d" % i, subject="o%d" % i, type_=t, data={"i": i}))
        c, r = open_stream(e, "topic=order.*&topic=payment.%23&after=0")
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
        got = read_events(r, 2)
        assert [(g[0], g[1]) for g in got] == [("1", "order.placed"), ("3", "order.paid")], got
        assert got[0][2]["data"] == {"i": 0} and got[0][2]["sequence"] == "1", got
        for i, t in enumerate(["stock.moved", "payment.done", "payment.eu.done", "order.shipped"]):
            e.publish(mtlib.event("l%d" % i, type_=t))
        got = read_events(r, 3)
        assert [g[1] for g in got] == ["payment.done", "payment.eu.done", "order.shipped"], got
        assert [g[0] for g in got] == ["6", "7", "8"], got
        c.close()


def test_many_live_streams_get_every_event_once_in_order_past_the_shared_ring():
    # Recent events are formatted once and shared by every stream; 20,000
    # events are more than that ring holds, so a stream that falls behind
    # reads the log, then rejoins the ring, with no gap and no duplicate.
    with Engine() as e:
        streams = [open_stream(e, "topic=n.%23")[1] for _ in range(8)]
        odd = open_stream(e, "topic=n.odd")[1]
        total = 20000
        for b in range(total // 500):
            e.publish_batch([mtlib.event("n%d" % (b * 500 + k),
                                         type_="n.odd" if k % 2 else "n.even")
                             for k in range(500)])
        for r in streams:
            got = read_events(r, total)
            assert [int(g[0]) for g in got] == list(range(1, total + 1))
            assert got[-1][2]["id"] == "e-n%d" % (total - 1)
        got = read_events(odd, total // 2)
        assert [int(g[0]) for g in got] == list(range(2, total + 1, 2))
        assert {g[1] for g in got} == {"n.odd"}


def test_the_engine_raises_its_open_file_limit_for_many_streams():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        e = Engine().start()  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open("/proc/%d/limits" % e.proc.pid) as f:
            line = [l for l in f if l.startswith("Max open files")][0].split()
        assert line[3] == line[4] and int(line[3]) > 256, line
        streams = [open_stream(e, "topic=x")[0] for _ in range(400)]
        e.publish(mtlib.event("x", type_="x"))
        st, _, _ = e.request("GET", "/healthz")
        assert st == 200
        for c in streams:
            c.close()
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_out_of_descriptors_the_engine_waits_instead_of_spinning():
    import resource
    # A hard limit of 64 the engine cannot raise.
    e = Engine(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))).start()
    try:
        socks = []
        for _ in range(80):  # more than it can take; the rest wait in the backlog
            s = socket.create_connection(("127.0.0.1", e.port))
            s.sendall(b"GET /subscribe?topic=x HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        time.sleep(2.5)
        warns = [l for l in e.stderr_lines if "accept" in l]
        assert 1 <= len(warns) <= 6, (len(warns), warns[:3])
        for s in socks:
            s.close()
        # Descriptors free again: it serves.
        got = mtlib.wait_for(lambda: e.request("GET", "/healthz")[0] == 200, timeout=10,
                             what="the engine to serve again")
        assert got
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_resume_from_last_event_id_has_no_gap_and_no_duplicate():
    with Engine() as e:
        for i in range(30):
            e.publish(mtlib.event("r%d" % i, type_="tick.t", data={"i": i}))
        c, r = open_stream(e, "topic=tick.%23&after=0")
        first = read_events(r, 10)
        c.close()  # the connection drops
        last = first[-1][0]
        for i in range(30, 40):
            e.publish(mtlib.event("r%d" % i, type_="tick.t", data={"i": i}))
        c, r = open_stream(e, "topic=tick.%23", {"Last-Event-ID": last})
        rest = read_events(r, 30)
        c.close()
        seen = [int(g[0]) for g in first + rest]
        assert seen == list(range(1, 41)), seen
        # Without after or Last-Event-ID the stream starts at the head: live only.
        c, r = open_stream(e, "topic=tick.%23")
        time.sleep(0.3)
        e.publish(mtlib.event("new", type_="tick.t"))
        assert [g[0] for g in read_events(r, 1)] == ["41"]
        c.close()


def test_bad_subscribe_requests_get_json_errors():
    with Engine() as e:
        for q in ("", "topic=a..b", "topic=a.b%2A", "topic=a&after=x"):
            st, h, body = e.request("GET", "/subscribe?" + q)
            assert st == 400, (q, st, body)
            ans = json.loads(body)
            assert set(ans) == {"error", "detail"}, ans
        st, _, body = e.request("GET", "/subscribe?topic=a", headers={"Last-Event-ID": "zz"})
        assert st == 400, body
        assert e.request("POST", "/subscribe?topic=a")[0] == 405


def test_a_client_that_never_reads_is_paused_and_others_are_served():
    with Engine() as e:
        s = socket.create_connection(("127.0.0.1", e.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /subscribe?topic=%23&after=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        conn = e.conn()
        big = "z" * 20000
        for b in range(20):
            st, body = e.publish_batch([mtlib.event("b%d-%d" % (b, k), type_="big.one",
                                                    data={"p": big}) for k in range(40)], conn=conn)
            assert st == 201, body
        # 16 MB published; the reader took none of it. The engine still answers.
        st, _, body = e.request("GET", "/healthz")
        assert st == 200 and json.loads(body)["head"] == "800", body
        c, r = open_stream(e, "topic=big.%23&after=790")
        assert [g[0] for g in read_events(r, 10)] == [str(i) for i in range(791, 801)]
        c.close()
        s.close()


mtlib.main(globals())

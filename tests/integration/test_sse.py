"""Server-Sent Events over GET /subscribe: catch-up then live, resume from
Last-Event-ID without gap or duplicate, bad input, and a client that never
reads does not stop the engine serving others."""
import http.client
import json
import os
import re
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


def test_streams_closed_while_fan_outs_run_leave_the_others_whole():
    # A fan-out writes a slice of streams per turn of the loop; streams
    # closed between two slices (here half of 500, at once, while events
    # keep coming) must not break the pass: every stream left open gets
    # every event, in order.
    import threading
    with Engine() as e:
        conns = [open_stream(e, "topic=f.%23") for _ in range(500)]
        total = 600
        started = threading.Event()

        def publish():
            for b in range(total // 4):
                e.publish_batch([mtlib.event("f%d" % (b * 4 + k), type_="f.tick")
                                 for k in range(4)])
                started.set()

        t = threading.Thread(target=publish)
        t.start()
        started.wait(30)
        for c, _ in conns[::2]:
            c.sock.shutdown(socket.SHUT_RDWR)
        for c, _ in conns[::2]:
            c.close()
        t.join()
        for c, r in conns[1::2]:
            got = read_events(r, total)
            assert [int(g[0]) for g in got] == list(range(1, total + 1))
            c.close()
        assert e.request("GET", "/healthz")[0] == 200


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


def test_sigterm_just_after_running_out_of_descriptors_exits_cleanly():
    # The listener pauses for a second after accept() fails; a drain in that
    # second must not leave the pause to re-enable a listener already freed.
    import resource
    # Under ASan, freed memory is filled so that a use inside libevent shows.
    env = {"ASAN_OPTIONS": ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""),
                                               "max_free_fill_size=65536:free_fill_byte=65") if x)}
    e = Engine(env=env, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
    e.start()
    try:
        socks = [socket.create_connection(("127.0.0.1", e.port)) for _ in range(80)]
        mtlib.wait_for(lambda: any("cannot accept" in l for l in e.stderr_lines), timeout=10,
                       what="the accept warning")
        time.sleep(0.85)
        assert e.stop() == 0
        for s in socks:
            s.close()
    finally:
        e.cleanup()


def test_out_of_descriptors_checkpoints_go_on_and_writes_are_kept():
    # Each checkpoint opened data.mdb to read its meta pages: out of
    # descriptors, every checkpoint failed, the write-ahead file filled up
    # and the stop's last checkpoint failed too.
    import resource
    e = Engine(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))).start()
    try:
        conn = e.conn()   # the publisher's connection, open before the others come
        assert e.publish(mtlib.event("fd-first"), conn=conn)[0] == 201
        socks = [socket.create_connection(("127.0.0.1", e.port)) for _ in range(80)]
        mtlib.wait_for(lambda: any("cannot accept" in l for l in e.stderr_lines), timeout=10,
                       what="the engine out of descriptors")
        for i in range(4):
            st, ans = e.publish(mtlib.event("fd-%d" % i), conn=conn)
            assert st == 201, (st, ans)
            time.sleep(0.5)
        conn.close()
        assert e.stop() == 0, e.stderr_lines[-5:]
        for s in socks:
            s.close()
        bad = [l for l in e.stderr_lines if "checkpoint" in l or "meta pages" in l]
        assert not bad, bad
    finally:
        e.cleanup()


def test_large_events_the_ring_does_not_keep_arrive_in_order():
    with Engine() as e:
        c, r = open_stream(e, "topic=big.%23")
        big = "y" * 100000
        sent = []
        for i in range(30):
            data = {"i": i, "pad": big if i % 3 == 0 else ""}
            e.publish(mtlib.event("b%d" % i, type_="big.x", data=data))
            sent.append(i)
        got = read_events(r, 30)
        assert [g[2]["data"]["i"] for g in got] == sent
        assert [len(g[2]["data"]["pad"]) for g in got[:3]] == [100000, 0, 0]
        c.close()


def test_a_heartbeat_while_output_waits_does_not_stall_the_stream():
    # A client that does not read for longer than the 15 s heartbeat while a
    # catch-up is under way: once it reads again it must get everything,
    # including what is published afterwards.
    with Engine() as e:
        pad = "x" * 300
        total = 20000
        for b in range(total // 1000):
            e.publish_batch([mtlib.event("h%d-%d" % (b, i), type_="t", data={"p": pad})
                             for i in range(1000)])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", e.port))
        s.sendall(b"GET /subscribe?topic=%23&after=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(16.5)
        e.publish(mtlib.event("late", type_="t"))
        s.settimeout(20)
        data = bytearray()
        deadline = time.monotonic() + 60
        while b"id: %d\n" % (total + 1) not in data:
            assert time.monotonic() < deadline, "stream stalled after %d bytes" % len(data)
            d = s.recv(1 << 20)
            assert d, "stream ended"
            data += d
        ids = [int(m) for m in re.findall(rb"\nid: (\d+)\n", b"\n" + bytes(data))]
        assert ids == list(range(1, total + 2)), (len(ids), ids[-3:])
        s.close()


def test_a_new_topic_gets_events_the_shared_ring_skipped():
    # The ring formats only events some open stream asks for; a stream on
    # another topic, opened later from the start, must still get them all.
    with Engine() as e:
        ca, ra = open_stream(e, "topic=a.%23")
        for i in range(20):
            e.publish(mtlib.event("x%d" % i, type_="a.x" if i % 4 == 0 else "b.x", data={"i": i}))
        got_a = read_events(ra, 5)
        assert [g[2]["data"]["i"] for g in got_a] == [0, 4, 8, 12, 16]
        cb, rb = open_stream(e, "topic=b.%23&after=0")
        got_b = read_events(rb, 15)
        assert [g[2]["data"]["i"] for g in got_b] == [i for i in range(20) if i % 4]
        e.publish(mtlib.event("y", type_="b.x", data={"i": 99}))
        assert read_events(rb, 1)[0][2]["data"]["i"] == 99
        ca.close()
        cb.close()


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
        for last in ("zz", "18446744073709551615"):  # the second: as after= refuses it
            st, _, body = e.request("GET", "/subscribe?topic=a", headers={"Last-Event-ID": last})
            assert st == 400, (last, body)
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

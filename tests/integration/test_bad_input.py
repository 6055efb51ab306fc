"""Every error path of the HTTP API against the real daemon
(docs/http-api.md): each answers JSON {"error", "detail"} with its status
and leaves the stored log exactly as it was. Also: bodies over max_body,
a full store (507), and clients that misbehave at the socket level.

Timing is never asserted except as generous upper bounds."""
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time

import mtlib
from mtlib import Engine, event

CE = {"Content-Type": "application/cloudevents+json"}
CE_BATCH = {"Content-Type": "application/cloudevents-batch+json"}

_tmp = tempfile.mkdtemp(prefix="moontide-it-conf-")


def config(name, text):
    path = os.path.join(_tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


NOSYNC = config("nosync.yaml", "version: 1\nengine:\n  durability: nosync\n")
SMALL_BODY = config("small-body.yaml",
                    "version: 1\nengine:\n  max_body: 64KiB\n  durability: nosync\n")
FULL_MAP = config("full-map.yaml", "version: 1\nengine:\n  map_size: 1MiB\n")       # fsync
BIG_MAP = config("big-map.yaml", "version: 1\nengine:\n  map_size: 64MiB\n")        # fsync


def seeded_engine(conf=NOSYNC):
    """An engine with a few events already stored, so 'nothing changed' means something."""
    e = Engine(config=conf).start()
    st, ans = e.publish_batch([event("seed-%d" % i, subject="seed", data={"i": i})
                               for i in range(3)])
    assert st == 201, ans
    return e


class Stopping:
    """with Stopping(engine) as e: ... stops it (expecting exit 0) and cleans up."""

    def __init__(self, e):
        self.e = e

    def __enter__(self):
        return self.e

    def __exit__(self, *exc):
        rc = self.e.stop() if self.e.proc else 0
        self.e.cleanup()
        if exc[0] is None:
            assert rc == 0, (rc, self.e.stderr_lines[-20:])
        return False


def snapshot(e):
    st, h, raw = e.request("GET", "/events?after=0&limit=10000")
    assert st == 200, (st, raw)
    return h["moontide-head"], raw


def expect_error(e, status, method, path, body=None, headers=None, detail=(), error=None):
    """Sends a request that must fail: checks the status, the JSON error form,
    that detail contains every string in 'detail', and that the log is unchanged.
    Returns the parsed answer."""
    before = snapshot(e)
    st, h, raw = e.request(method, path, body, headers)
    assert st == status, (method, path, body if body is None or len(body) < 300 else "...",
                          headers, "expected %d, got %d" % (status, st), raw)
    assert h.get("content-type", "").startswith("application/json"), (h, raw)
    ans = json.loads(raw)
    assert isinstance(ans, dict), raw
    assert isinstance(ans.get("error"), str) and ans["error"], ans
    assert isinstance(ans.get("detail"), str) and ans["detail"], ans
    if status != 409:
        assert set(ans) == {"error", "detail"}, ans
    if error is not None:
        assert ans["error"] == error, ans
    if isinstance(detail, str):
        detail = (detail,)
    for d in detail:
        assert d in ans["detail"], ("detail should name %r" % d, ans)
    assert snapshot(e) == before, "the log changed after %d answer to %r" % (status, body)
    return ans


def structured(e, body, status=400, detail=(), headers=None):
    h = dict(CE)
    h.update(headers or {})
    return expect_error(e, status, "POST", "/events", body, h, detail)


def batch(e, body, status=400, detail=(), headers=None):
    h = dict(CE_BATCH)
    h.update(headers or {})
    return expect_error(e, status, "POST", "/events", body, h, detail)


def ev(**kw):
    """A valid structured event, with attributes replaced (None removes)."""
    e = {"specversion": "1.0", "id": "bad-1", "source": "/bad", "type": "bad.input",
         "subject": "bad"}
    for k, v in kw.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def bin_headers(ct="application/json", **attrs):
    h = {"ce-specversion": "1.0", "ce-id": "bin-1", "ce-source": "/bad", "ce-type": "bad.input"}
    for k, v in attrs.items():
        if v is None:
            h.pop("ce-" + k, None)
        else:
            h["ce-" + k] = v
    if ct is not None:
        h["Content-Type"] = ct
    return h


# ---- malformed bodies ----

def test_malformed_json_and_wrong_shapes():
    with Stopping(seeded_engine()) as e:
        good = json.dumps(ev())
        structured(e, good[:-1], detail="malformed JSON")                 # truncated
        structured(e, good[:25])                                          # truncated in a string
        structured(e, good + " x", detail="unexpected data after the end")
        structured(e, good + "}")
        structured(e, good + good)
        structured(e, "")                                                 # no body
        structured(e, "   ")
        structured(e, "{'specversion': '1.0'}")                           # not JSON
        structured(e, '{"specversion" "1.0"}')
        structured(e, '{"specversion":"1.0",}')
        structured(e, b'{"specversion":"1.0","id":"\xff\xfe","source":"/b","type":"t"}')
        for not_object in ("[" + good + "]", '"event"', "42", "null", "true"):
            structured(e, not_object, detail="object")
        batch(e, good, detail="array")                                    # batch not an array
        batch(e, '"x"', detail="array")
        batch(e, "", detail="array")
        batch(e, "[]", detail="empty")
        batch(e, " [ \n ] ", detail="empty")
        batch(e, "[" + good + ",]")
        batch(e, "[" + good + "," + good[:-3])
        batch(e, "[" + good + "] []", detail="unexpected data after the end")
        batch(e, "[" + good + " " + good + "]", detail="events[0]")
        batch(e, "[" + good + ", 42]", detail="events[1]")
        # An attribute given twice.
        structured(e, good[:-1] + ', "type": "other.type"}', detail="type")


def test_missing_required_attributes_are_named():
    with Stopping(seeded_engine()) as e:
        for attr in ("specversion", "id", "source", "type"):
            ans = structured(e, ev(**{attr: None}), detail=attr)
            assert "missing" in ans["detail"], ans
        for attr in ("specversion", "id", "source", "type"):
            body = [ev(id="ok-0"), ev(id="ok-1"), ev(**{"id": "ok-2", attr: None})]
            batch(e, body, detail="events[2].%s" % attr)
        batch(e, [ev(id=None), ev(id="ok-1")], detail="events[0].id")
        # Binary mode: the header is missing.
        for attr in ("id", "source", "type"):
            expect_error(e, 400, "POST", "/events", b"{}", bin_headers(**{attr: None}),
                         detail=attr)


def test_attributes_of_the_wrong_type_or_value():
    with Stopping(seeded_engine()) as e:
        cases = [
            (dict(id=5), "id"),
            (dict(id=""), "id"),
            (dict(id="x" * 201), "id"),
            (dict(source=["/a"]), "source"),
            (dict(source=""), "source"),
            (dict(type={"a": 1}), "type"),
            (dict(type="a..b"), "type"),
            (dict(type="orders.*"), "type"),
            (dict(type="has space"), "type"),
            (dict(specversion="0.3"), "specversion"),
            (dict(specversion=1.0), "specversion"),
            (dict(priority="high"), "priority"),
            (dict(priority=12), "priority"),
            (dict(priority=-1), "priority"),
            (dict(priority="12"), "priority"),
            (dict(priority=1.5), "priority"),
            (dict(priority=True), "priority"),
            (dict(time="yesterday"), "time"),
            (dict(time="2024-02-30T00:00:00Z"), "time"),
            (dict(time="2024-01-01"), "time"),
            (dict(time=1700000000), "time"),
            (dict(expirytime="soon"), "expirytime"),
            (dict(deliverafter="later"), "deliverafter"),
            (dict(subject=""), "subject"),
            (dict(subject=7), "subject"),
            (dict(subject="s" * 401), "subject"),
            (dict(subject="a\u0000b"), "subject"),
            (dict(datacontenttype=5), "datacontenttype"),
            (dict(replyto="not a topic"), "replyto"),
            (dict(tenant=1.5), "tenant"),           # extension: string, integer or boolean
            (dict(tenant={"a": "b"}), "tenant"),
            (dict(tenant=["a"]), "tenant"),
            (dict(tenant="t" * 4097), "tenant"),
        ]
        for attrs, name in cases:
            structured(e, ev(**attrs), detail=name)
        # In a batch the index comes first.
        batch(e, [ev(id="a"), ev(id="b", priority="high")], detail="events[1].priority")
        batch(e, [ev(id="a", time="yesterday"), ev(id="b")], detail="events[0].time")
        batch(e, [ev(id="a"), ev(id="b"), ev(id="c", subject="")], detail="events[2].subject")
        # Binary mode headers.
        expect_error(e, 400, "POST", "/events", b"{}", bin_headers(priority="high"),
                     detail="priority")
        expect_error(e, 400, "POST", "/events", b"{}", bin_headers(time="yesterday"),
                     detail="time")
        expect_error(e, 400, "POST", "/events", b"{}", bin_headers(subject="a%00b"),
                     detail="ce-subject")


def test_integer_beyond_64_bits_in_data_is_refused():
    with Stopping(seeded_engine()) as e:
        for n in ("9223372036854775808", "-9223372036854775809", "18446744073709551616",
                  "123456789012345678901234567890"):
            body = ('{"specversion":"1.0","id":"big","source":"/b","type":"t.x",'
                    '"data":{"n":%s}}' % n)
            structured(e, body, detail="data")
            batch(e, '[{"specversion":"1.0","id":"ok","source":"/b","type":"t.x"},%s]' % body,
                  detail="events[1].data")
            expect_error(e, 400, "POST", "/events", ('[1, %s]' % n).encode(),
                         bin_headers("application/json"), detail="data")
        # Likewise in an extension attribute.
        structured(e, '{"specversion":"1.0","id":"big","source":"/b","type":"t.x",'
                      '"count":9223372036854775808}')


def test_engine_assigned_attributes_are_refused():
    with Stopping(seeded_engine()) as e:
        for attr, v in (("sequence", "7"), ("streamversion", 3),
                        ("recordedtime", "2024-01-01T00:00:00Z"), ("sequence", None)):
            body = dict(ev(), **{attr: v})
            ans = structured(e, body, detail=attr)
            assert "engine" in ans["detail"], ans
            batch(e, [ev(id="x"), body], detail="events[1].%s" % attr)
        for attr in ("sequence", "streamversion", "recordedtime"):
            expect_error(e, 400, "POST", "/events", b"{}", bin_headers(**{attr: "1"}),
                         detail=attr)


def test_invalid_extension_attribute_names():
    with Stopping(seeded_engine()) as e:
        for name in ("Bad-Name", "Tenant", "under_score", "has-dash", "a" * 21, "caf\u00e9", ""):
            structured(e, dict(ev(), **{name: "x"}), detail=name or "''")
        batch(e, [ev(id="x"), dict(ev(id="y"), **{"Bad-Name": 1})], detail="events[1]")
        # In binary mode header names are case-insensitive, but a dash is not allowed.
        expect_error(e, 400, "POST", "/events", b"{}", dict(bin_headers(), **{"ce-bad-name": "x"}),
                     detail="bad-name")


def test_data_and_data_base64_together():
    with Stopping(seeded_engine()) as e:
        structured(e, ev(data={"a": 1}, data_base64="QUJD"), detail="data_base64")
        structured(e, ev(data_base64="QUJD", data="x"), detail="data_base64")
        batch(e, [ev(id="x"), ev(id="y", data=1, data_base64="")], detail="events[1]")
        structured(e, ev(data_base64=42), detail="data_base64")
        # In binary mode the body is the data: data headers are refused.
        for name in ("data", "data_base64", "datacontenttype"):
            expect_error(e, 400, "POST", "/events", b"{}", dict(bin_headers(), **{"ce-" + name: "x"}),
                         detail=name)


def test_invalid_base64_is_refused():
    with Stopping(seeded_engine()) as e:
        for bad in ("Q", "QUJDRA", "QUJD=", "QU JD", "QUJD\n", "@@@@", "QUJ!", "QUJD QUJD"):
            structured(e, ev(data_base64=bad), detail="data_base64")


def test_base64_padding_must_be_well_formed():
    # 4-character groups that are not valid base64 must be refused, not decoded
    # into other bytes. Regression: "QUJD====" was stored as "AB" (the data of
    # "QUJD" is "ABC"), "QQ=A" as b"A\0\0", "A===" and "====" as empty data.
    with Stopping(seeded_engine()) as e:
        for bad in ("QUJD====", "QQ=A", "QQ==QQ==", "A===", "Q===", "===="):
            structured(e, ev(id="pad-" + bad, data_base64=bad), detail="data_base64")


# ---- content types and headers ----

def test_unknown_content_types_get_415():
    with Stopping(seeded_engine()) as e:
        body = json.dumps(ev())
        for ct in ("application/json", "text/plain", "application/cloudevents+xml",
                   "application/x-www-form-urlencoded", None):
            h = {"Content-Type": ct} if ct else {}
            ans = expect_error(e, 415, "POST", "/events", body, h)
            assert ans["error"] == "unsupported content type", ans
        # A ce- header other than ce-specversion does not make it binary mode.
        expect_error(e, 415, "POST", "/events", body, {"Content-Type": "application/json",
                                                       "ce-id": "x", "ce-type": "t.x"})
        # Content type parameters and case do not matter for the structured modes.
        st, _, raw = e.request("POST", "/events", json.dumps(ev(id="ok-ct")),
                               {"Content-Type": "Application/CloudEvents+JSON; charset=utf-8"})
        assert st == 201, (st, raw)


def test_binary_mode_errors():
    with Stopping(seeded_engine()) as e:
        ans = expect_error(e, 400, "POST", "/events", b"{}", bin_headers(specversion="0.3"),
                           detail="specversion")
        expect_error(e, 400, "POST", "/events", b"{}", bin_headers(specversion=""),
                     detail="specversion")
        # A JSON content type needs a JSON body.
        for bad in (b"{", b'{"a": 1} x', b"not json", b"\xff"):
            expect_error(e, 400, "POST", "/events", bad, bin_headers("application/json"),
                         detail="data")
        expect_error(e, 400, "POST", "/events", b"{", bin_headers("application/vnd.x+json"),
                     detail="data")


def test_expected_version_errors():
    with Stopping(seeded_engine()) as e:
        for bad in ("banana", "-1", "1.5", "", "1 2", "0x10", "NO_STREAM", "18446744073709551616"):
            ans = expect_error(e, 400, "POST", "/events", ev(),
                               dict(CE, **{"moontide-expected-version": bad}),
                               detail="moontide-expected-version")
            assert ans["error"] == "invalid expected version", ans
        # All events of the request must share one subject.
        for kind in ("no_stream", "exists", "2"):
            expect_error(e, 400, "POST", "/events", [ev(id="a", subject="s1"),
                                                     ev(id="b", subject="s2")],
                         dict(CE_BATCH, **{"moontide-expected-version": kind}),
                         detail="subject")
            expect_error(e, 400, "POST", "/events", [ev(id="a", subject="s1"),
                                                     ev(id="b", subject=None)],
                         dict(CE_BATCH, **{"moontide-expected-version": kind}),
                         detail="subject")
            expect_error(e, 400, "POST", "/events", ev(subject=None),
                         dict(CE, **{"moontide-expected-version": kind}), detail="subject")
        # 409 is an error answer too, with its extra fields, and appends nothing.
        ans = expect_error(e, 409, "POST", "/events", ev(subject="seed"),
                           dict(CE, **{"moontide-expected-version": "0"}))
        assert ans["error"] == "wrong expected version", ans
        assert ans["subject"] == "seed" and ans["current"] == 2, ans


# ---- body size ----

def _raw_request(port, head, body=b"", timeout=10):
    """Sends raw bytes; returns (status, headers dict, body bytes) of the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                hdr, _, rest = data.partition(b"\r\n\r\n")
                hs = {}
                for line in hdr.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    hs[k.strip().lower().decode()] = v.strip().decode()
                n = int(hs.get("content-length", "-1"))
                if n >= 0 and len(rest) >= n:
                    break
        hdr, _, rest = data.partition(b"\r\n\r\n")
        status = int(hdr.split(b" ")[1])
        hs = {}
        for line in hdr.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            hs[k.strip().lower().decode()] = v.strip().decode()
        return status, hs, rest
    finally:
        s.close()


def _event_body(size, id_="big"):
    """A valid structured event whose body is exactly 'size' bytes."""
    head = '{"specversion":"1.0","id":"%s","source":"/size","type":"t.x","data":"' % id_
    tail = '"}'
    return (head + "x" * (size - len(head) - len(tail)) + tail).encode()


def test_oversized_bodies_get_413():
    with Stopping(seeded_engine(SMALL_BODY)) as e:
        limit = 64 * 1024
        # At the limit: accepted.
        body = _event_body(limit, "at-limit")
        assert len(body) == limit
        st, _, raw = e.request("POST", "/events", body, CE)
        assert st == 201, (st, raw[:200])
        # Slightly over and 100 KiB over: the engine's JSON 413, nothing stored.
        for size in (limit + 1, 100 * 1024):
            ans = structured(e, _event_body(size, "over-%d" % size), status=413)
            assert ans["error"] == "body too large", ans
            assert str(limit) in ans["detail"], ans
        ans = batch(e, b"[" + _event_body(100 * 1024) + b"]", status=413)
        ans = expect_error(e, 413, "POST", "/events", b"x" * (100 * 1024),
                           bin_headers("application/octet-stream"))
        # 10 MiB: refused by the HTTP layer from its Content-Length (libevent's
        # own HTML body: only the status is checked). The body is read to its
        # end and dropped first: cut off while sending, a client used to get a
        # broken pipe instead of the answer.
        before = snapshot(e)
        head = (b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/cloudevents+json\r\n"
                b"Content-Length: %d\r\n\r\n" % (10 * 1024 * 1024))
        st, _, _ = _raw_request(e.port, head, b"x" * (10 * 1024 * 1024), timeout=60)
        assert st == 413, st
        st, _, _ = e.request("POST", "/events", b"x" * (10 * 1024 * 1024), CE)
        assert st == 413, st
        assert snapshot(e) == before
        # Still serving.
        st, ans = e.publish(event("after-413", data={"ok": True}))
        assert st == 201, ans
        st, _, raw = e.request("GET", "/healthz")
        assert st == 200, raw


SMALL_WAL = config("small-wal.yaml", "version: 1\nengine:\n  wal_size: 1MiB\n  max_body: 4MiB\n")


def test_events_larger_than_the_write_ahead_file_get_413():
    # Under max_body, but more than a 1 MiB write-ahead file can take (fsync).
    d = tempfile.mkdtemp(prefix="moontide-it-wal-")
    try:
        e = Engine(data_dir=d, config=SMALL_WAL).start()
        try:
            st, ans = e.publish(event("fits", data="x" * 300000, datacontenttype="text/plain"))
            assert st == 201, ans
            before = snapshot(e)
            for size in (1500000, 3500000):
                ans = structured(e, _event_body(size, "too-big-%d" % size), status=413)
                assert ans["error"] == "body too large", ans
            ans = batch(e, [event("b%d" % i, data="y" * 400000, datacontenttype="text/plain")
                            for i in range(4)], status=413)
            assert snapshot(e) == before
            # Not a poisoned writer: normal events go on.
            st, ans = e.publish(event("after", subject="s"))
            assert st == 201 and ans["events"][0]["sequence"] == "2", ans
            after = snapshot(e)
        finally:
            rc = e.stop()
        assert rc == 0, (rc, e.stderr_lines[-20:])
        with Engine(data_dir=d, config=SMALL_WAL) as e:
            assert snapshot(e) == after
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- queries and routes ----

def test_malformed_query_parameters_are_named():
    with Stopping(seeded_engine()) as e:
        for q, name in (("after=abc", "after"), ("after=-1", "after"), ("after=1.5", "after"),
                        ("after=", "after"), ("after=18446744073709551615", "after"),
                        ("after=99999999999999999999", "after"),
                        ("limit=-1", "limit"), ("limit=abc", "limit"),
                        ("limit=10001", "limit"), ("limit=1e3", "limit"),
                        ("wait=forever", "wait"), ("wait=61s", "wait"), ("wait=-1s", "wait"),
                        ("wait=5", "wait"), ("wait=2h", "wait"),
                        ("after=1&limit=x", "limit"), ("after=0&wait=soon", "wait")):
            ans = expect_error(e, 400, "GET", "/events?" + q, detail="'%s'" % name)
            assert ans["error"] == "invalid query parameter", ans
        for q, name in (("from=abc", "from"), ("from=-1", "from"), ("limit=-1", "limit"),
                        ("limit=10001", "limit")):
            expect_error(e, 400, "GET", "/streams/seed?" + q, detail="'%s'" % name)
        # limit=0 asks for nothing; it once meant "the default" without a word.
        for path in ("/events?limit=0", "/streams/seed?limit=0", "/tables/t?limit=0"):
            ans = expect_error(e, 400, "GET", path, detail="'limit'")
            assert ans["detail"] == "'limit' must be a whole number from 1 to 10000, got '0'", ans
        # A query string that does not parse at all.
        expect_error(e, 400, "GET", "/events?after")
        # A NUL byte: decoded, prefix=s%00x would have read as prefix=s.
        for path in ("/tables/t?prefix=s%00x", "/events?after=1%00", "/streams/seed?from=%00"):
            expect_error(e, 400, "GET", path, detail="NUL")
        # A subject that is not a valid name.
        expect_error(e, 400, "GET", "/streams/a%00b", detail="subject")
        # Bytes that are not UTF-8, quoted in the answer as U+FFFD with the rest kept.
        ans = expect_error(e, 404, "GET", "/streams/caf%E9")
        assert ans["detail"] == "no events with subject 'caf\ufffd'", ans
        expect_error(e, 400, "GET", "/streams/" + "s" * 401, detail="subject")


def test_unknown_paths_methods_and_streams():
    with Stopping(seeded_engine()) as e:
        for path in ("/", "/event", "/events/", "/events/1", "/streams", "/streams/",
                     "/healthz/x", "/EVENTS", "/nowhere?after=1"):
            for method in ("GET", "POST"):
                ans = expect_error(e, 404, method, path, b"{}" if method == "POST" else None,
                                   CE if method == "POST" else None)
                assert ans["error"] == "not found", ans
        for method, path, allow in (("DELETE", "/events", "GET, POST"),
                                    ("PUT", "/events", "GET, POST"),
                                    ("PATCH", "/events", "GET, POST"),
                                    ("OPTIONS", "/events", "GET, POST"),
                                    ("DELETE", "/streams/seed", "GET"),
                                    ("POST", "/streams/seed", "GET"),
                                    ("PUT", "/healthz", "GET"),
                                    ("POST", "/healthz", "GET")):
            before = snapshot(e)
            st, h, raw = e.request(method, path, b"{}" if method in ("POST", "PUT") else None,
                                   CE)
            assert st == 405, (method, path, st, raw)
            assert h.get("allow") == allow, (method, path, h)
            ans = json.loads(raw)
            assert set(ans) == {"error", "detail"} and ans["error"] == "method not allowed", ans
            assert snapshot(e) == before
        ans = expect_error(e, 404, "GET", "/streams/unknown", detail="unknown")
        assert ans["error"] == "stream not found", ans
        expect_error(e, 404, "GET", "/streams/unknown?from=0&limit=5")
        expect_error(e, 404, "GET", "/streams/see")    # a prefix of a stream is not it
        expect_error(e, 404, "GET", "/streams/seed%20")


def test_other_known_methods_get_405_json():
    # docs/http-api.md: "405 known path with another method (with Allow)", and
    # every error answer is JSON. Regression: TRACE was left out of evhttp's
    # allowed methods, so libevent answered 501 with an HTML body.
    with Stopping(seeded_engine()) as e:
        st, h, raw = _raw_request(e.port, b"TRACE /events HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Length: 0\r\n\r\n")
        assert st == 405, (st, raw)
        assert h.get("allow") == "GET, POST", h
        assert h.get("content-type", "").startswith("application/json"), (h, raw)
        assert set(json.loads(raw)) == {"error", "detail"}, raw


# ---- a full store ----

def _big_batch(k, n=2, pad=50000):
    return [event("full-%d-%d" % (k, i), subject="big-%d" % (k % 3),
                  data={"k": k, "i": i, "pad": chr(ord("a") + (k + i) % 26) * pad})
            for i in range(n)]


def _check_big_events(evs, acked):
    """Every acknowledged event is there, once, intact, in order."""
    by_id = {x["id"]: x for x in evs}
    assert len(by_id) == len(evs), "an event appears twice"
    for (eid, seq, sv), sent in acked:
        got = by_id.get(eid)
        assert got is not None, "acknowledged event %s is missing" % eid
        assert got["sequence"] == seq and got.get("streamversion") == sv, (got["sequence"], seq)
        assert got["data"] == sent["data"] and got["subject"] == sent["subject"], eid
    assert [x["id"] for x in evs[:len(acked)]] == [a[0][0] for a in acked]


def test_full_store_answers_507_and_keeps_acknowledged_events():
    d = tempfile.mkdtemp(prefix="moontide-it-full-")
    try:
        e = Engine(data_dir=d, config=FULL_MAP).start()
        acked = []     # ((id, sequence, streamversion), sent event)
        full_batch = None
        try:
            for k in range(60):   # 60 x 100 KB is far beyond a 1 MiB map
                b = _big_batch(k)
                st, ans = e.publish_batch(b)
                if st == 507:
                    full_batch = b
                    assert set(ans) == {"error", "detail"} and ans["error"] == "store full", ans
                    break
                assert st == 201, (k, st, ans)
                for r, sent in zip(ans["events"], b):
                    acked.append(((r["id"], r["sequence"], r["streamversion"]), sent))
            assert full_batch is not None, "never got 507 from a 1 MiB map"
            assert acked, "the map was full before the first batch"
            _check_big_events(e.read_all(limit=5), acked)
            # Still answering reads; further publishes get 507, not a crash.
            # A checkpoint makes the pages freed before it reusable, so a
            # batch may fit again meanwhile: it is then acknowledged as any.
            refused, k = 1, 60
            while refused < 4:
                before = snapshot(e)
                st, ans = e.publish_batch(full_batch)
                if st == 201:
                    for r, sent in zip(ans["events"], full_batch):
                        acked.append(((r["id"], r["sequence"], r["streamversion"]), sent))
                    k += 1
                    assert k < 120, "the store never filled up again"
                    full_batch = _big_batch(k)
                    continue
                assert st == 507, (st, ans)
                assert ans["error"] == "store full" and ans["detail"], ans
                refused += 1
                st, h, raw = e.request("GET", "/healthz")
                assert st == 200 and json.loads(raw)["status"] == "ok", (st, raw)
                st, h, raw = e.request("GET", "/events?after=0&limit=1")
                assert st == 200 and len(json.loads(raw)) == 1, st
                st, h, raw = e.request("GET", "/streams/big-0?limit=1")
                assert st == 200, st
                assert snapshot(e) == before
                # A refused batch's ids were not taken.
                st, _, raw = e.request("GET", "/events?after=%s" % before[0])
                assert st == 200 and json.loads(raw) == [], raw
        finally:
            rc = e.stop()
        assert rc == 0, (rc, e.stderr_lines[-20:])

        # Restart with room to spare: every acknowledged event is there and
        # the refused ones are not; the log goes on from there.
        e = Engine(data_dir=d, config=BIG_MAP).start()
        try:
            evs = e.read_all(limit=5)
            assert len(evs) == len(acked), (len(evs), len(acked))
            _check_big_events(evs, acked)
            st, ans = e.publish_batch(full_batch)
            assert st == 201, (st, ans)
            assert not any(x.get("duplicate") for x in ans["events"]), ans
            assert ans["events"][0]["sequence"] == str(len(acked) + 1), ans
        finally:
            rc = e.stop()
        assert rc == 0, (rc, e.stderr_lines[-20:])
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- misbehaving clients ----

def _healthy(e):
    st, _, raw = e.request("GET", "/healthz")
    assert st == 200 and json.loads(raw)["status"] == "ok", (st, raw)


def _rst_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _post_head(length):
    return (b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json"
            b"\r\nContent-Length: %d\r\n\r\n" % length)


def test_clients_disconnecting_mid_request():
    with Stopping(seeded_engine()) as e:
        before = snapshot(e)
        body = json.dumps(ev(id="never")).encode()
        head = _post_head(len(body))
        for rst in (False, True):
            for cut in (b"POS", head[:40], head, head + body[:10], head + body[:-1]):
                s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
                s.sendall(cut)
                _rst_close(s) if rst else s.close()
                _healthy(e)
        # Nothing of a request cut short is stored.
        assert snapshot(e) == before
        # A whole request whose client leaves without reading the answer is
        # stored at most once: publishing it again is a duplicate or new, never a second copy.
        for i, rst in enumerate((False, True)):
            b = json.dumps(ev(id="left-%d" % i, subject="left")).encode()
            s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
            s.sendall(_post_head(len(b)) + b)
            _rst_close(s) if rst else s.close()
            _healthy(e)
        st, ans = e.publish_batch([ev(id="left-0", subject="left"), ev(id="left-1", subject="left")])
        assert st in (200, 201), (st, ans)
        ids = [x["id"] for x in e.read_all()]
        assert ids.count("left-0") == 1 and ids.count("left-1") == 1, ids
        # A long poll whose client leaves, then an append that would answer it,
        # and one whose wait runs out after its client left.
        for wait in ("10s", "300ms"):
            s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
            s.sendall(b"GET /events?after=%s&wait=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                      % (snapshot(e)[0].encode(), wait.encode()))
            time.sleep(0.2)
            s.close()
        time.sleep(0.5)  # the short wait ends with nobody to answer
        st, ans = e.publish(event("wakes-nobody"))
        assert st == 201, ans
        _healthy(e)
        # Long polls still work afterwards.
        head_now = snapshot(e)[0]
        st, _, raw = e.request("GET", "/events?after=%s&wait=200ms" % head_now)
        assert st == 200 and json.loads(raw) == [], raw


def test_slow_and_half_requests_do_not_block_others():
    with Stopping(seeded_engine()) as e:
        socks = []
        try:
            # Half a request line, headers without their blank line, and a
            # body that trickles in: each held open while others are served.
            for part in (b"GE", b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                         b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                         b"GET /events?after=0 HTTP/1.1\r\nHost: x\r\nX-Slow: "):
                for _ in range(5):
                    s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
                    s.sendall(part)
                    socks.append(s)
            c = e.conn(timeout=10)
            try:
                for i in range(30):
                    st, ans = e.publish(event("busy-%d" % i, subject="busy"), conn=c)
                    assert st == 201, ans
                    st, _, raw = e.request("GET", "/streams/busy?from=%d" % i, conn=c)
                    assert st == 200 and json.loads(raw)[0]["id"] == "e-busy-%d" % i, raw
            finally:
                c.close()
            # A slowloris that finally completes its request gets a real answer.
            body = json.dumps(ev(id="slow", subject="slow")).encode()
            s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
            socks.append(s)
            req = _post_head(len(body)) + body
            for i in range(0, len(req), 7):
                s.sendall(req[i:i + 7])
                if i % 70 == 0:
                    _healthy(e)
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 201"), data
            assert b'"id":"slow"' in data, data
        finally:
            for s in socks:
                s.close()
        _healthy(e)
        ids = [x["id"] for x in e.read_all()]
        assert ids.count("slow") == 1 and len(ids) == 3 + 30 + 1, ids


if __name__ == "__main__":
    try:
        mtlib.main(globals())
    finally:
        shutil.rmtree(_tmp, ignore_errors=True)

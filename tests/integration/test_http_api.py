"""The HTTP API's happy paths and semantics against the real daemon
(docs/http-api.md): the three publishing modes, data kept byte for byte,
engine and extension attributes, expected versions, batch atomicity,
deduplication, reading the log and streams, long polls, restarts and
keep-alive connections.

Timing is never asserted except as generous upper bounds."""
import base64
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse

import mtlib
from mtlib import Engine, event

CE = {"Content-Type": "application/cloudevents+json"}
CE_BATCH = {"Content-Type": "application/cloudevents-batch+json"}
RFC3339_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

_tmp = tempfile.mkdtemp(prefix="moontide-it-conf-")


def config(name, text):
    path = os.path.join(_tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# Tests that do not concern durability run without fsync.
NOSYNC = config("nosync.yaml", "version: 1\nengine:\n  durability: nosync\n")


def fast_engine():
    return Engine(config=NOSYNC)


def post(e, body, headers, conn=None):
    """POST /events with a raw body; returns (status, headers, parsed JSON)."""
    st, h, raw = e.request("POST", "/events", body, headers, conn)
    return st, h, json.loads(raw)


def get_json(e, path, conn=None):
    st, h, raw = e.request("GET", path, None, None, conn)
    return st, h, (json.loads(raw) if raw else None), raw


def raw_log(e):
    st, _, raw = e.request("GET", "/events?after=0&limit=10000")
    assert st == 200, (st, raw)
    return raw


def binary(e, body, content_type, **attrs):
    """Binary-mode publish: attrs become ce-* headers as given (not encoded)."""
    h = {"ce-%s" % k: v for k, v in attrs.items()}
    if content_type is not None:
        h["Content-Type"] = content_type
    return post(e, body, h)


def base_attrs(i, **more):
    a = {"specversion": "1.0", "id": "b-%s" % i, "source": "/bin", "type": "bin.happened"}
    a.update(more)
    return a


# ---- publishing modes ----

def test_structured_mode_appends_and_reads_back():
    with fast_engine() as e:
        st, ans = e.publish(event(1, subject="order-1", data={"total": 12}))
        assert st == 201, (st, ans)
        assert ans == {"events": [{"id": "e-1", "sequence": "1", "streamversion": 0}]}, ans
        # Without a subject: no streamversion in the answer.
        st, ans = e.publish(event(2))
        assert st == 201 and ans["events"] == [{"id": "e-2", "sequence": "2"}], ans
        st, h, evs, _ = get_json(e, "/events")
        assert st == 200, st
        assert h["content-type"].startswith("application/cloudevents-batch+json"), h
        assert [x["id"] for x in evs] == ["e-1", "e-2"], evs
        first = evs[0]
        for k, v in (("specversion", "1.0"), ("source", "/test"), ("type", "test.happened"),
                     ("subject", "order-1"), ("data", {"total": 12})):
            assert first[k] == v, (k, first)
        assert "streamversion" not in evs[1] and "subject" not in evs[1], evs[1]


def test_batch_mode_appends_all_in_order():
    with fast_engine() as e:
        batch = [event(i, subject="s-%d" % (i % 2), data={"i": i}) for i in range(5)]
        st, ans = e.publish_batch(batch)
        assert st == 201, (st, ans)
        got = ans["events"]
        assert [x["id"] for x in got] == ["e-%d" % i for i in range(5)], got
        assert [x["sequence"] for x in got] == ["1", "2", "3", "4", "5"], got
        assert [x["streamversion"] for x in got] == [0, 0, 1, 1, 2], got
        assert not any("duplicate" in x for x in got), got
        evs = e.read_all()
        assert [x["id"] for x in evs] == ["e-%d" % i for i in range(5)], evs
        assert [x["data"] for x in evs] == [{"i": i} for i in range(5)], evs
        assert [x["subject"] for x in evs] == ["s-0", "s-1", "s-0", "s-1", "s-0"], evs


def test_binary_mode_json_body():
    with fast_engine() as e:
        body = b'{"a": [1, 2.50, "x"],  "n": 9223372036854775807}'
        st, _, ans = binary(e, body, "application/json", **base_attrs(1, subject="bin-1"))
        assert st == 201, (st, ans)
        assert ans["events"] == [{"id": "b-1", "sequence": "1", "streamversion": 0}], ans
        raw = raw_log(e)
        assert b',"data":' + body + b"}]" in raw, raw
        ev = json.loads(raw)[0]
        assert ev["datacontenttype"] == "application/json", ev
        assert ev["source"] == "/bin" and ev["type"] == "bin.happened", ev
        # A +json media type with parameters is JSON too; JSON scalars are fine.
        st, _, ans = binary(e, b"42", "application/vnd.acme+json; charset=utf-8",
                            **base_attrs(2))
        assert st == 201, (st, ans)
        ev = e.read_all()[1]
        assert ev["data"] == 42 and ev["datacontenttype"] == "application/vnd.acme+json; charset=utf-8", ev


def test_binary_mode_text_body():
    with fast_engine() as e:
        text = "h\u00e9llo\nw\u00f6rld \"quoted\" \\ tab\t"
        st, _, ans = binary(e, text.encode("utf-8"), "text/plain; charset=utf-8",
                            **base_attrs(1))
        assert st == 201, (st, ans)
        ev = e.read_all()[0]
        assert ev["data"] == text, ev
        assert "data_base64" not in ev, ev
        assert ev["datacontenttype"] == "text/plain; charset=utf-8", ev


def test_binary_mode_octet_stream_returns_data_base64():
    with fast_engine() as e:
        blob = bytes(range(256)) * 3 + b"\x00\xff"
        st, _, ans = binary(e, blob, "application/octet-stream", **base_attrs(1))
        assert st == 201, (st, ans)
        ev = e.read_all()[0]
        assert "data" not in ev, ev
        assert base64.b64decode(ev["data_base64"], validate=True) == blob, ev
        assert ev["datacontenttype"] == "application/octet-stream", ev
        # Text that is not UTF-8 can only come back as base64, bytes intact.
        bad = b"caf\xe9 \xff"
        st, _, ans = binary(e, bad, "text/plain", **base_attrs(2))
        assert st == 201, (st, ans)
        ev = e.read_all()[1]
        assert base64.b64decode(ev["data_base64"]) == bad, ev


def test_binary_mode_percent_encoded_headers():
    with fast_engine() as e:
        attrs = base_attrs(1, subject="order%201", source="/shop%2Feu",
                           correlationid="c%C3%A9-1", tenant="acme%20corp",
                           time="2024-05-01T10:00:00Z", priority="7")
        attrs["id"] = "id%2B1+x"  # '+' is not a space in a header
        st, _, ans = binary(e, b'{"k":1}', "application/json", **attrs)
        assert st == 201, (st, ans)
        assert ans["events"][0]["id"] == "id+1+x", ans
        ev = e.read_all()[0]
        assert ev["subject"] == "order 1", ev
        assert ev["source"] == "/shop/eu", ev
        assert ev["correlationid"] == "c\u00e9-1", ev
        assert ev["tenant"] == "acme corp", ev
        assert ev["time"] == "2024-05-01T10:00:00Z", ev
        assert ev["priority"] == 7, ev
        # The decoded subject is the stream's name.
        st, _, evs, _ = get_json(e, "/streams/order%201")
        assert st == 200 and [x["id"] for x in evs] == ["id+1+x"], (st, evs)


# ---- data byte for byte ----

DATA_TEXT = ('{"big": 9223372036854775807, "neg": -9223372036854775808, "f": 1.10, '
             '"s": "\u00e9\\u00e9"}').encode("utf-8")


def test_data_is_kept_byte_for_byte():
    with fast_engine() as e:
        # Structured mode, with the data's exact text inside the event text.
        body = (b'{"specversion": "1.0", "id": "d1", "source": "/bytes", "type": "t.x", '
                b'"data": ' + DATA_TEXT + b"}")
        st, _, ans = post(e, body, CE)
        assert st == 201, (st, ans)
        # Batch mode, odd spacing around the data.
        body = (b'[ {"specversion":"1.0","id":"d2","source":"/bytes","type":"t.x","data":'
                + DATA_TEXT + b' } ,{"id":"d3","data" :\n' + DATA_TEXT +
                b'\n,"specversion":"1.0","source":"/bytes","type":"t.x"}]')
        st, _, ans = post(e, body, CE_BATCH)
        assert st == 201, (st, ans)
        # Binary mode.
        st, _, ans = binary(e, DATA_TEXT, "application/json",
                            specversion="1.0", id="d4", source="/bytes", type="t.x")
        assert st == 201, (st, ans)
        # Scalars and odd JSON: exact text too.
        for i, d in enumerate([b"1.10", b"-0.0e+00", b'"\\u00e9 \\/ x"', b"[ ]", b"null"], 5):
            body = (b'{"specversion":"1.0","id":"d%d","source":"/bytes","type":"t.x","data":'
                    % i) + d + b"}"
            st, _, ans = post(e, body, CE)
            assert st == 201, (i, st, ans)
        raw = raw_log(e)
        # Compare raw bytes: each event's data is spliced in as sent.
        assert raw.count(b',"data":' + DATA_TEXT + b"}") == 4, raw
        for d in (b"1.10", b"-0.0e+00", b'"\\u00e9 \\/ x"', b"[ ]"):
            assert b',"data":' + d + b"}" in raw, (d, raw)
        evs = json.loads(raw)
        assert [x["id"] for x in evs] == ["d%d" % i for i in range(1, 10)], evs
        assert evs[0]["data"]["big"] == 9223372036854775807, evs[0]
        assert evs[0]["data"]["neg"] == -9223372036854775808, evs[0]
        assert evs[0]["data"]["s"] == "\u00e9\u00e9", evs[0]
        # "null" data is no data.
        assert "data" not in evs[8], evs[8]


def test_a_nul_character_is_kept_in_data_and_refused_in_attributes():
    """JSON strings may hold U+0000: data keeps it in every mode and reads it
    back; an attribute cannot hold it, and the error says where it is."""
    with fast_engine() as e:
        nul = b'{"s": "a\\u0000b", "t": ["\\u0000"]}'
        body = b'{"specversion":"1.0","id":"n1","source":"/nul","type":"t.x","data":' + nul + b"}"
        st, _, ans = post(e, body, CE)
        assert st == 201, (st, ans)
        st, _, ans = binary(e, nul, "application/json",
                            specversion="1.0", id="n2", source="/nul", type="t.x")
        assert st == 201, (st, ans)
        st, _, ans = post(e, b'{"specversion":"1.0","id":"n3","source":"/nul","type":"t.x",'
                          b'"datacontenttype":"text/plain","data":"x\\u0000y"}', CE)
        assert st == 201, (st, ans)
        evs = json.loads(raw_log(e))
        assert [x["data"] for x in evs] == [{"s": "a\0b", "t": ["\0"]}] * 2 + ["x\0y"], evs
        for where, body in [
                ("subject", b'{"specversion":"1.0","id":"n4","source":"/nul","type":"t.x",'
                            b'"subject":"a\\u0000"}'),
                ("an attribute name", b'{"specversion":"1.0","id":"n5","source":"/nul","type":"t.x",'
                         b'"x\\u0000":"1"}')]:
            st, _, ans = post(e, body, CE)
            detail = ans["detail"]
            assert st == 400 and detail.startswith(where + ": a NUL character (\\u0000) at byte"), ans
            assert "only strings in data may hold" in detail, ans
        assert len(json.loads(raw_log(e))) == 3


def test_structured_text_and_base64_data():
    with fast_engine() as e:
        st, ans = e.publish(event(1, data="line 1\nline \u00e9", datacontenttype="text/plain"))
        assert st == 201, ans
        blob = bytes(range(200))
        st, ans = e.publish(event(2, data_base64=base64.b64encode(blob).decode(),
                                  datacontenttype="application/octet-stream"))
        assert st == 201, ans
        # A string without datacontenttype is JSON data: its text is kept.
        st, ans = e.publish(event(3, data="plain \u00e9"))
        assert st == 201, ans
        st, ans = e.publish(event(4, data_base64=""))
        assert st == 201, ans
        evs = e.read_all()
        assert evs[0]["data"] == "line 1\nline \u00e9" and evs[0]["datacontenttype"] == "text/plain", evs[0]
        assert base64.b64decode(evs[1]["data_base64"]) == blob and "data" not in evs[1], evs[1]
        assert evs[2]["data"] == "plain \u00e9", evs[2]
        assert base64.b64decode(evs[3].get("data_base64", "")) == b"", evs[3]


# ---- attributes ----

def test_engine_attributes_on_read():
    with fast_engine() as e:
        subjects = ["a", "b", "a", "c", "a", None, "b", "a"]
        batch = [event(i, subject=s) for i, s in enumerate(subjects[:4])]
        assert e.publish_batch(batch)[0] == 201
        for i, s in enumerate(subjects[4:], 4):
            assert e.publish(event(i, subject=s))[0] == 201
        evs = e.read_all()
        assert len(evs) == len(subjects), evs
        for n, ev in enumerate(evs, 1):
            assert isinstance(ev["sequence"], str) and ev["sequence"] == str(n), ev
            assert RFC3339_US.match(ev["recordedtime"]), ev
        seen = {}
        for ev, s in zip(evs, subjects):
            if s is None:
                assert "streamversion" not in ev, ev
                continue
            assert type(ev["streamversion"]) is int, ev
            assert ev["streamversion"] == seen.get(s, -1) + 1, (ev, seen)
            seen[s] = ev["streamversion"]
        assert seen == {"a": 3, "b": 1, "c": 0}, seen
        # The same attributes on a stream read.
        st, _, sa, _ = get_json(e, "/streams/a")
        assert st == 200 and [x["streamversion"] for x in sa] == [0, 1, 2, 3], sa
        assert sa == [x for x in evs if x.get("subject") == "a"], sa


def test_optional_and_extension_attributes_round_trip():
    with fast_engine() as e:
        ext = {"tenant": "acme", "retries": 3, "flag": True, "off": False,
               "big": 9223372036854775807, "a1b2c3d4e5f6g7h8i9j0": "x"}
        opt = {"time": "2024-02-29T23:59:60.123456789+05:30", "datacontenttype": "application/json",
               "dataschema": "https://example.com/schema/v1", "dataversion": "2",
               "correlationid": "corr-1", "causationid": "cause-1",
               "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
               "expirytime": "2099-01-01T00:00:00Z", "deliverafter": "2000-01-01T00:00:00Z",
               "replyto": "orders.replies"}
        st, ans = e.publish(event(1, subject="x", data={"k": "v"}, priority=3, **dict(ext, **opt)))
        assert st == 201, ans
        st, ans = e.publish(event(2, priority="9", tenant=""))
        assert st == 201, ans
        st, ans = e.publish(event(3, priority=0, subject=None))
        assert st == 201, ans
        evs = e.read_all()
        ev = evs[0]
        for k, v in list(ext.items()) + list(opt.items()):
            assert k in ev and ev[k] == v and type(ev[k]) is type(v), (k, ev)
        assert ev["priority"] == 3 and ev["data"] == {"k": "v"}, ev
        assert evs[1]["priority"] == 9 and evs[1]["tenant"] == "", evs[1]
        assert evs[2]["priority"] == 0, evs[2]
        # A null attribute is an absent one.
        assert "subject" not in evs[2], evs[2]
        # No attribute beyond what was sent plus the engine's three.
        assert set(ev) == set(ext) | set(opt) | {
            "specversion", "id", "source", "type", "subject", "priority", "data",
            "sequence", "streamversion", "recordedtime"}, sorted(ev)


# ---- expected version ----

def log_len(e):
    return len(e.read_all())


def test_expected_version_any_and_default():
    with fast_engine() as e:
        assert e.publish(event(1, subject="s"), expected="any")[0] == 201
        assert e.publish(event(2, subject="s"), expected="any")[0] == 201
        assert e.publish(event(3, subject="s"))[0] == 201
        assert log_len(e) == 3


def test_expected_version_no_stream():
    with fast_engine() as e:
        st, ans = e.publish(event(1, subject="fresh"), expected="no_stream")
        assert st == 201 and ans["events"][0]["streamversion"] == 0, ans
        st, ans = e.publish(event(2, subject="fresh"), expected="no_stream")
        assert st == 409, (st, ans)
        assert ans["error"] == "wrong expected version" and ans["detail"], ans
        assert ans["subject"] == "fresh" and ans["current"] == 0, ans
        # A batch on a new subject with no_stream.
        st, ans = e.publish_batch([event(i, subject="fresh2") for i in (3, 4, 5)],
                                  expected="no_stream")
        assert st == 201 and [x["streamversion"] for x in ans["events"]] == [0, 1, 2], ans
        st, ans = e.publish_batch([event(i, subject="fresh2") for i in (6, 7)],
                                  expected="no_stream")
        assert st == 409 and ans["current"] == 2 and ans["subject"] == "fresh2", ans
        assert [x["id"] for x in e.read_all()] == ["e-1", "e-3", "e-4", "e-5"]


def test_expected_version_exists():
    with fast_engine() as e:
        st, ans = e.publish(event(1, subject="s"), expected="exists")
        assert st == 409, (st, ans)
        assert ans["error"] == "wrong expected version", ans
        assert ans["subject"] == "s" and ans["current"] == -1, ans
        assert log_len(e) == 0
        assert e.publish(event(2, subject="s"))[0] == 201
        st, ans = e.publish(event(3, subject="s"), expected="exists")
        assert st == 201 and ans["events"][0]["streamversion"] == 1, ans
        assert log_len(e) == 2


def test_expected_version_number():
    with fast_engine() as e:
        # On a stream that does not exist, any number conflicts with current -1.
        st, ans = e.publish(event(1, subject="acct"), expected=0)
        assert st == 409 and ans["current"] == -1 and ans["subject"] == "acct", (st, ans)
        assert e.publish(event(2, subject="acct"))[0] == 201          # version 0
        st, ans = e.publish(event(3, subject="acct"), expected=0)     # head is 0
        assert st == 201 and ans["events"][0]["streamversion"] == 1, ans
        for stale in (0, 2, 5, 18446744073709551615):
            before = raw_log(e)
            st, ans = e.publish(event(10 + stale % 7, subject="acct"), expected=stale)
            assert st == 409, (stale, st, ans)
            assert ans["current"] == 1 and ans["subject"] == "acct", ans
            assert ans["error"] == "wrong expected version" and "detail" in ans, ans
            assert raw_log(e) == before  # a 409 appends nothing
        st, ans = e.publish_batch([event(i, subject="acct") for i in (4, 5)], expected=1)
        assert st == 201 and [x["streamversion"] for x in ans["events"]] == [2, 3], ans
        # Another subject's events do not move this stream's head.
        assert e.publish(event(6, subject="other"))[0] == 201
        st, ans = e.publish(event(7, subject="acct"), expected=3)
        assert st == 201 and ans["events"][0]["streamversion"] == 4, ans
        assert log_len(e) == 6


def test_expected_version_with_only_duplicates_succeeds():
    with fast_engine() as e:
        st, ans = e.publish(event(1, subject="s"), expected="no_stream")
        assert st == 201, ans
        # A retried append (the same event) is a duplicate, not a conflict.
        st, ans = e.publish(event(1, subject="s"), expected="no_stream")
        assert st == 200, (st, ans)
        assert ans["events"] == [{"id": "e-1", "sequence": "1", "streamversion": 0,
                                   "duplicate": True}], ans
        assert log_len(e) == 1


# ---- batch atomicity ----

def test_batch_with_invalid_third_event_appends_nothing():
    with fast_engine() as e:
        assert e.publish(event(0, subject="s"))[0] == 201
        before = raw_log(e)
        bad = [event(1, subject="s"), event(2, subject="s"),
               {"specversion": "1.0", "id": "e-3", "source": "/test", "subject": "s"},
               event(4, subject="s")]
        st, ans = e.publish_batch(bad)
        assert st == 400, (st, ans)
        assert "events[2].type" in ans["detail"], ans
        assert raw_log(e) == before
        # The same ids published later are new events, not duplicates.
        st, ans = e.publish_batch([event(1, subject="s"), event(2, subject="s")])
        assert st == 201 and not any(x.get("duplicate") for x in ans["events"]), ans
        assert [x["sequence"] for x in ans["events"]] == ["2", "3"], ans


def test_batch_with_expected_version_conflict_appends_nothing():
    with fast_engine() as e:
        assert e.publish_batch([event(i, subject="s") for i in range(3)])[0] == 201
        before = raw_log(e)
        st, ans = e.publish_batch([event(i, subject="s") for i in range(3, 8)], expected=1)
        assert st == 409 and ans["current"] == 2, (st, ans)
        assert raw_log(e) == before
        # Duplicates followed by a new event: the check applies to the new one.
        st, ans = e.publish_batch([event(2, subject="s"), event(9, subject="s")], expected=1)
        assert st == 409 and ans["current"] == 2, (st, ans)
        assert raw_log(e) == before
        st, ans = e.publish_batch([event(2, subject="s"), event(9, subject="s")], expected=2)
        assert st == 201, (st, ans)
        assert ans["events"][0] == {"id": "e-2", "sequence": "3", "streamversion": 2,
                                    "duplicate": True}, ans
        assert ans["events"][1] == {"id": "e-9", "sequence": "4", "streamversion": 3}, ans


# ---- deduplication ----

def test_deduplication_by_source_and_id():
    with fast_engine() as e:
        st, ans = e.publish(event(1, subject="s", data={"v": 1}))
        assert st == 201, ans
        assert e.publish(event(2, subject="s"))[0] == 201
        before = raw_log(e)
        # Same (source, id), even with other content: not appended again.
        st, ans = e.publish(event(1, subject="s", data={"v": 2}))
        assert st == 200, (st, ans)
        assert ans == {"events": [{"id": "e-1", "sequence": "1", "streamversion": 0,
                                   "duplicate": True}]}, ans
        assert raw_log(e) == before
        # Binary mode sees the same identity.
        st, _, ans = binary(e, b"{}", "application/json", specversion="1.0", id="e-2",
                            source="/test", type="t.x")
        assert st == 200 and ans["events"][0]["duplicate"] is True, ans
        assert ans["events"][0]["sequence"] == "2", ans
        assert raw_log(e) == before
        # The same id from another source is another event.
        st, ans = e.publish(event(1, subject="s", source="/elsewhere"))
        assert st == 201, (st, ans)
        assert ans["events"] == [{"id": "e-1", "sequence": "3", "streamversion": 2}], ans
        evs = e.read_all()
        assert len(evs) == 3 and evs[0]["data"] == {"v": 1}, evs


def test_deduplication_within_and_across_batches():
    with fast_engine() as e:
        st, ans = e.publish_batch([event(1, subject="s"), event(2, subject="s"),
                                   event(1, subject="s", data="again"), event(3)])
        assert st == 201, (st, ans)
        assert ans["events"] == [
            {"id": "e-1", "sequence": "1", "streamversion": 0},
            {"id": "e-2", "sequence": "2", "streamversion": 1},
            {"id": "e-1", "sequence": "1", "streamversion": 0, "duplicate": True},
            {"id": "e-3", "sequence": "3"},
        ], ans
        assert [x["id"] for x in e.read_all()] == ["e-1", "e-2", "e-3"]
        # An all-duplicate batch answers 200; a partly new one 201.
        st, ans = e.publish_batch([event(3), event(2, subject="s")])
        assert st == 200, (st, ans)
        assert ans["events"] == [{"id": "e-3", "sequence": "3", "duplicate": True},
                                 {"id": "e-2", "sequence": "2", "streamversion": 1,
                                  "duplicate": True}], ans
        st, ans = e.publish_batch([event(3), event(4, subject="s")])
        assert st == 201, (st, ans)
        assert ans["events"][0]["duplicate"] is True and "duplicate" not in ans["events"][1], ans
        assert ans["events"][1] == {"id": "e-4", "sequence": "4", "streamversion": 2}, ans
        assert log_len(e) == 4


# ---- reading ----

def test_read_log_paging_with_after_and_limit():
    with fast_engine() as e:
        assert e.publish_batch([event(i, data={"i": i}) for i in range(1, 26)])[0] == 201
        st, h, page, _ = get_json(e, "/events?after=0&limit=10")
        assert st == 200 and [x["sequence"] for x in page] == [str(i) for i in range(1, 11)], page
        assert h["moontide-head"] == "25", h
        st, _, page, _ = get_json(e, "/events?after=10&limit=10")
        assert [x["sequence"] for x in page] == [str(i) for i in range(11, 21)], page
        st, _, page, _ = get_json(e, "/events?after=20&limit=10")
        assert [x["sequence"] for x in page] == [str(i) for i in range(21, 26)], page
        st, h, page, raw = get_json(e, "/events?after=25&limit=10")
        assert st == 200 and page == [] and raw.strip() == b"[]", raw
        assert h["moontide-head"] == "25", h
        st, _, page, _ = get_json(e, "/events?after=1000")
        assert st == 200 and page == [], page
        # Defaults: after=0, limit=100.
        st, _, page, _ = get_json(e, "/events")
        assert len(page) == 25 and page[0]["sequence"] == "1", page
        st, _, page, _ = get_json(e, "/events?limit=1")
        assert [x["id"] for x in page] == ["e-1"], page
        st, _, page, _ = get_json(e, "/events?after=24")
        assert [x["id"] for x in page] == ["e-25"], page
        # Every page together is the whole log, each event once.
        assert [x["data"]["i"] for x in e.read_all(limit=7)] == list(range(1, 26))


def test_read_log_default_and_maximum_limit():
    with fast_engine() as e:
        for k in range(3):
            st, ans = e.publish_batch([event("%d-%d" % (k, i)) for i in range(50)])
            assert st == 201, ans
        st, _, page, _ = get_json(e, "/events")
        assert len(page) == 100, len(page)
        st, _, page, _ = get_json(e, "/events?limit=10000")
        assert len(page) == 150, len(page)


def test_read_stream_with_from_and_limit():
    with fast_engine() as e:
        for i in range(12):
            assert e.publish(event(i, subject="s-%d" % (i % 3), data={"i": i}))[0] == 201
        st, h, evs, _ = get_json(e, "/streams/s-1")
        assert st == 200 and [x["data"]["i"] for x in evs] == [1, 4, 7, 10], evs
        assert [x["streamversion"] for x in evs] == [0, 1, 2, 3], evs
        assert h["moontide-head"] == "12", h
        assert h["content-type"].startswith("application/cloudevents-batch+json"), h
        st, _, evs, _ = get_json(e, "/streams/s-1?from=1&limit=2")
        assert [x["streamversion"] for x in evs] == [1, 2], evs
        st, _, evs, _ = get_json(e, "/streams/s-1?from=3")
        assert [x["data"]["i"] for x in evs] == [10], evs
        # Past the end of an existing stream: an empty page, not 404.
        st, _, evs, _ = get_json(e, "/streams/s-1?from=4")
        assert st == 200 and evs == [], (st, evs)
        st, _, evs, _ = get_json(e, "/streams/s-2?limit=1")
        assert [x["id"] for x in evs] == ["e-2"], evs


def test_stream_subject_with_slash_and_space():
    with fast_engine() as e:
        subjects = ["orders/2024/1", "order 1", "a/b c%d", "caf\u00e9"]
        for i, s in enumerate(subjects):
            assert e.publish(event(i, subject=s))[0] == 201
        # A prefix of another subject is its own stream.
        assert e.publish(event(9, subject="orders/2024"))[0] == 201
        for i, s in enumerate(subjects):
            enc = urllib.parse.quote(s, safe="")
            st, _, evs, raw = get_json(e, "/streams/" + enc)
            assert st == 200, (s, st, raw)
            assert [x["id"] for x in evs] == ["e-%d" % i] and evs[0]["subject"] == s, (s, evs)
        st, _, evs, _ = get_json(e, "/streams/orders%2F2024")
        assert [x["id"] for x in evs] == ["e-9"], evs


def test_moontide_head_header_and_healthz():
    with fast_engine() as e:
        st, h, body, _ = get_json(e, "/healthz")
        assert st == 200 and body == {"status": "ok", "head": "0"}, (st, body)
        st, h, page, _ = get_json(e, "/events")
        assert st == 200 and page == [] and h["moontide-head"] == "0", (h, page)
        assert e.publish_batch([event(i, subject="s") for i in range(4)])[0] == 201
        st, h, page, _ = get_json(e, "/events?after=0&limit=2")
        assert h["moontide-head"] == "4" and len(page) == 2, (h, page)
        st, h, _, _ = get_json(e, "/streams/s?limit=1")
        assert h["moontide-head"] == "4", h
        st, h, body, _ = get_json(e, "/healthz")
        assert st == 200 and body == {"status": "ok", "head": "4"}, body
        assert h["content-type"].startswith("application/json"), h
        # HEAD answers the same status and headers without a body.
        st, h, raw = e.request("HEAD", "/events")
        assert st == 200 and raw == b"" and h["moontide-head"] == "4", (st, h, raw)


# ---- long poll ----

def _long_poll(e, path, out):
    t0 = time.monotonic()
    try:
        st, h, raw = e.request("GET", path)
        out["status"], out["headers"], out["body"] = st, h, raw
    except Exception as x:  # reported by the test
        out["error"] = repr(x)
    out["elapsed"] = time.monotonic() - t0


def test_long_poll_is_released_by_a_publish():
    with fast_engine() as e:
        assert e.publish(event(1))[0] == 201
        head = e.request("GET", "/healthz")[2]
        head = int(json.loads(head)["head"])
        outs = [{}, {}]
        threads = [threading.Thread(target=_long_poll, args=(e, "/events?after=%d&wait=5s" % head,
                                                               outs[0])),
                   threading.Thread(target=_long_poll, args=(e, "/events?after=%d&limit=1&wait=5s"
                                                               % head, outs[1]))]
        for t in threads:
            t.start()
        # Held: nothing comes back while nothing is published.
        time.sleep(0.3)
        assert all(not o for o in outs), outs
        t0 = time.monotonic()
        st, ans = e.publish_batch([event(2, data={"new": True}), event(3)])
        assert st == 201, ans
        for t in threads:
            t.join(10)
        assert time.monotonic() - t0 < 4.5, "the poll was not released by the publish"
        for o, n in zip(outs, (2, 1)):
            assert "error" not in o, o
            assert o["status"] == 200, o
            evs = json.loads(o["body"])
            assert [x["id"] for x in evs] == ["e-2", "e-3"][:n], evs
            assert o["headers"]["moontide-head"] == "3", o["headers"]
        assert json.loads(outs[0]["body"])[0]["data"] == {"new": True}


def test_an_abandoned_long_poll_gives_its_connection_back_at_once():
    # A client that closes a waiting poll: its descriptor was held until the
    # wait ended (up to 60 s), so abandoned polls could use up the engine's
    # open-file limit and lock everyone out.
    with Engine() as e:
        head = int(json.loads(e.request("GET", "/healthz")[2])["head"])
        mtlib.abandon_waits(e, [b"GET /events?after=%d&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n"
                                % head] * 20)
        # A poll that stays is still answered by a publish.
        out = {}
        t = threading.Thread(target=_long_poll, args=(e, "/events?after=%d&wait=30s" % head, out))
        t.start()
        time.sleep(0.3)
        assert e.publish(event("after-abandon"))[0] == 201
        t.join(30)
        assert out.get("status") == 200 and len(json.loads(out["body"])) == 1, out


def test_long_poll_times_out_with_empty_array():
    with fast_engine() as e:
        assert e.publish(event(1))[0] == 201
        out = {}
        _long_poll(e, "/events?after=1&wait=1s", out)
        assert out["status"] == 200 and json.loads(out["body"]) == [], out
        assert out["headers"]["moontide-head"] == "1", out
        assert out["elapsed"] >= 0.9, out  # the timer did not fire at once
        assert out["elapsed"] < 30, out
        out = {}
        _long_poll(e, "/events?after=1&wait=300ms", out)
        assert out["status"] == 200 and json.loads(out["body"]) == [], out
        # With events already there, the wait does not apply.
        out = {}
        _long_poll(e, "/events?after=0&wait=60s", out)
        assert out["status"] == 200 and [x["id"] for x in json.loads(out["body"])] == ["e-1"], out
        assert out["elapsed"] < 30, out


def test_long_poll_ignores_duplicates():
    with fast_engine() as e:
        assert e.publish(event(1))[0] == 201
        out = {}
        t = threading.Thread(target=_long_poll, args=(e, "/events?after=1&wait=2s", out))
        t.start()
        time.sleep(0.2)
        st, ans = e.publish(event(1))
        assert st == 200 and ans["events"][0]["duplicate"], ans
        t.join(30)
        assert out["status"] == 200 and json.loads(out["body"]) == [], out


def test_long_poll_is_answered_when_the_engine_stops():
    e = fast_engine().start()
    try:
        assert e.publish(event(1))[0] == 201
        out = {}
        t = threading.Thread(target=_long_poll, args=(e, "/events?after=1&wait=30s", out))
        t.start()
        time.sleep(0.3)
        assert not out, out
        rc = e.stop()
        t.join(30)
        assert rc == 0, (rc, e.stderr_lines[-20:])
        assert "error" not in out, out
        assert out["status"] == 200 and json.loads(out["body"]) == [], out
        assert out["elapsed"] < 25, out  # answered by the drain, not by the wait
    finally:
        e.cleanup()


# ---- restart ----

def test_restart_keeps_events_versions_and_dedupe():
    d = tempfile.mkdtemp(prefix="moontide-it-restart-")
    try:
        e = Engine(data_dir=d).start()
        try:
            assert e.publish_batch([event(i, subject="acct-%d" % (i % 2), data={"i": i})
                                    for i in range(6)])[0] == 201
            assert e.publish(event("nosubj", data_base64="AAEC"))[0] == 201
            st, _, ans = binary(e, b"text body", "text/plain", specversion="1.0", id="bin",
                                source="/bin", type="t.x", subject="acct-0")
            assert st == 201, ans
            before = raw_log(e)
        finally:
            rc = e.stop()
        assert rc == 0, (rc, e.stderr_lines[-20:])

        e = Engine(data_dir=d).start()
        try:
            assert raw_log(e) == before  # everything, byte for byte, recordedtime included
            st, _, health, _ = get_json(e, "/healthz")
            assert st == 200 and health == {"status": "ok", "head": "8"}, health
            # Dedupe state survived.
            st, ans = e.publish(event(3, subject="acct-1"))
            assert st == 200 and ans["events"] == [{"id": "e-3", "sequence": "4",
                                                    "streamversion": 1, "duplicate": True}], ans
            # Stream heads survived: expected versions keep working.
            st, ans = e.publish(event(10, subject="acct-0"), expected=2)
            assert st == 409 and ans["current"] == 3, ans
            st, ans = e.publish(event(10, subject="acct-0"), expected=3)
            assert st == 201, ans
            # Sequences continue.
            assert ans["events"] == [{"id": "e-10", "sequence": "9", "streamversion": 4}], ans
            st, _, evs, _ = get_json(e, "/streams/acct-0")
            assert [x["streamversion"] for x in evs] == [0, 1, 2, 3, 4], evs
            assert [x["sequence"] for x in evs] == ["1", "3", "5", "8", "9"], evs
            after = raw_log(e)
        finally:
            rc = e.stop()
        assert rc == 0, rc

        # A second restart: still the same, including the event added after the first.
        with Engine(data_dir=d) as e:
            assert raw_log(e) == after
            assert e.publish(event(11))[1]["events"][0]["sequence"] == "10"
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- connections ----

def test_many_keep_alive_requests_on_one_connection():
    with fast_engine() as e:
        c = e.conn()
        try:
            st, _, _ = e.request("GET", "/healthz", conn=c)
            assert st == 200
            sock = c.sock
            assert sock is not None
            for i in range(150):
                if i % 3 == 0:
                    st, ans = e.publish(event(i, subject="k"), conn=c)
                    assert st == 201, ans
                elif i % 3 == 1:
                    st, h, raw = e.request("GET", "/events?after=%d&limit=5" % max(0, i // 3 - 2),
                                           conn=c)
                    assert st == 200 and json.loads(raw), raw
                else:
                    st, h, raw = e.request("GET", "/nowhere", conn=c)
                    assert st == 404, st  # errors keep the connection too
                assert c.sock is sock, "the engine closed the keep-alive connection at %d" % i
            st, ans = e.publish_batch([event("b%d" % i) for i in range(3)], conn=c)
            assert st == 201 and c.sock is sock, ans
        finally:
            c.close()
        assert log_len(e) == 53


if __name__ == "__main__":
    try:
        mtlib.main(globals())
    finally:
        shutil.rmtree(_tmp, ignore_errors=True)

"""Webhooks: events POSTed as signed structured CloudEvents (Standard
Webhooks), retried on 5xx with the same webhook-id, honouring Retry-After,
and a 410 pauses the subscription."""
import base64
import hashlib
import hmac
import http.server
import json
import os
import tempfile
import threading
import time

import mtlib
from mtlib import Engine, wait_for

SECRET = base64.b64encode(b"moontide-test-secret-0123456789").decode()


class Receiver:
    """A webhook endpoint on a free loopback port that verifies signatures."""

    def __init__(self, behaviour):
        self.behaviour = behaviour     # (webhook_id, attempt_no) -> (status, headers)
        self.calls = []                # (webhook_id, event, signature_ok)
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                wid = self.headers.get("webhook-id")
                ts = self.headers.get("webhook-timestamp")
                sig = self.headers.get("webhook-signature", "")
                mac = hmac.new(base64.b64decode(SECRET), ("%s.%s." % (wid, ts)).encode() + body,
                               hashlib.sha256).digest()
                ok = sig == "v1," + base64.b64encode(mac).decode()
                with outer.lock:
                    outer.calls.append((wid, json.loads(body), ok, body))
                    attempt = sum(1 for c in outer.calls if c[0] == wid)
                status, headers = outer.behaviour(wid, attempt)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def config(port, extra=""):
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nsubscriptions:\n  hook:\n    topics: [\"order.#\"]\n"
                "    deliver: { webhook: { url: \"http://127.0.0.1:%d/hooks/orders\", "
                "secret: \"whsec_%s\", concurrency: 2 } }\n"
                "    retry: { max_attempts: 5, backoff: 50ms, max_backoff: 200ms }\n%s"
                % (port, SECRET, extra))
    return path




def test_signed_delivery_retried_until_the_receiver_accepts():
    # Fails twice (once with Retry-After), then succeeds, for every event.
    def behaviour(wid, attempt):
        if attempt == 1:
            return 503, {"Retry-After": "1"}
        if attempt == 2:
            return 500, {}
        return 204, {}

    r = Receiver(behaviour)
    try:
        with Engine(config=config(r.port)) as e:
            for i in range(4):
                e.publish(mtlib.event("w%d" % i, subject="order-%d" % i, type_="order.placed",
                                      data={"total": 1.10, "big": 9223372036854775807}))
            e.publish(mtlib.event("skip", type_="stock.moved"))
            wait_for(lambda: json.loads(e.request("GET", "/subscriptions/hook")[2])["handled"] == 4,
                     what="4 acknowledged deliveries")
            with r.lock:
                calls = list(r.calls)
            assert all(c[2] for c in calls), "a signature did not verify"
            ids = sorted(set(c[0] for c in calls))
            assert len(ids) == 4 and all(ids.count(i) == 1 for i in ids), ids
            for wid in ids:
                mine = [c for c in calls if c[0] == wid]
                assert len(mine) == 3, (wid, len(mine))  # the same webhook-id on every retry
            assert {c[1]["id"] for c in calls} == {"e-w%d" % i for i in range(4)}
            # data arrives byte for byte as published (mtlib sends json.dumps text)
            assert b'"data":{"total": 1.1, "big": 9223372036854775807}' in calls[0][3], calls[0][3]
            s = json.loads(e.request("GET", "/subscriptions/hook")[2])
            assert s["dlq"] == 0 and s["retrying"] == 0, s
    finally:
        r.close()


def test_each_subject_is_delivered_in_order_across_concurrent_requests():
    # The second event of every subject fails once: the subject's later
    # events must wait for its retry, while other subjects go on.
    def behaviour(wid, attempt):
        time.sleep(0.01)
        seq = int(wid.rsplit("-", 1)[1])
        return (500, {}) if attempt == 1 and seq in second else (204, {})

    second = set()
    r = Receiver(behaviour)
    try:
        with Engine(config=config(r.port)) as e:
            e.request("POST", "/subscriptions/hook/pause")
            order = {}
            for k in range(6):
                for subj in ("a", "b", "c"):
                    st, ans = e.publish(mtlib.event("%s%d" % (subj, k), subject=subj,
                                                    type_="order.placed"))
                    order.setdefault(subj, []).append("e-%s%d" % (subj, k))
                    if k == 1:
                        second.add(int(ans["events"][0]["sequence"]))
            e.request("POST", "/subscriptions/hook/resume")
            wait_for(lambda: len(r.calls) == 18 + 3, timeout=60, what="21 webhook calls")
            for subj, ids in order.items():
                got = [c[1]["id"] for c in r.calls if c[1]["subject"] == subj]
                want = ids[:2] + ids[1:]  # the second one twice: failed, then retried
                assert got == want, (subj, got)
    finally:
        r.close()


def test_gone_endpoint_pauses_the_subscription():
    r = Receiver(lambda wid, attempt: (410, {}))
    try:
        with Engine(config=config(r.port)) as e:
            e.publish(mtlib.event("g", type_="order.placed"))
            s = wait_for(lambda: (lambda s: s["paused"] and s)(
                json.loads(e.request("GET", "/subscriptions/hook")[2])), what="the pause")
            assert s["handled"] == 0, s
            n = len(r.calls)
            time.sleep(0.5)
            assert len(r.calls) == n, "delivery went on after 410"
    finally:
        r.close()


def test_unreachable_endpoint_dead_letters_after_max_attempts():
    r = Receiver(lambda wid, attempt: (204, {}))
    port = r.port
    r.close()  # nothing listens there any more
    with Engine(config=config(port, "")) as e:
        e.publish(mtlib.event("u", type_="order.placed"))
        dlq = wait_for(lambda: json.loads(e.request("GET", "/subscriptions/hook/dlq")[2]),
                       timeout=60, what="the dead letter")
        assert dlq[0]["reason"] == "retries exhausted", dlq
        # Each attempt says why it failed (the list was empty).
        errs = dlq[0]["errors"]
        assert [x["attempt"] for x in errs] == [1, 2, 3, 4, 5], errs
        assert all("/hooks/orders: no answer (connection failed" in x["error"] for x in errs), errs
        s = json.loads(e.request("GET", "/subscriptions/hook")[2])
        assert "no answer" in s["last_error"], s


def test_a_failed_answer_is_kept_as_the_attempts_error():
    r = Receiver(lambda wid, attempt: (500 if attempt == 1 else 422, {}))
    try:
        with Engine(config=config(r.port, "")) as e:
            e.publish(mtlib.event("f", type_="order.placed"))
            dlq = wait_for(lambda: json.loads(e.request("GET", "/subscriptions/hook/dlq")[2]),
                           timeout=60, what="the dead letter")
            errs = [x["error"] for x in dlq[0]["errors"]]
            assert errs[0].endswith("/hooks/orders: answered 500 Internal Server Error"), errs
            assert errs[1].endswith("/hooks/orders: answered 422 Unprocessable Entity"), errs
    finally:
        r.close()


def test_a_post_that_outlives_its_lease_is_ended_not_sent_twice_at_once():
    post_outlives_its_lease()


def test_on_a_slow_disk_a_post_still_ends_before_its_lease():
    # Every sync 300 ms late: a pull's answer comes back 300 ms after its
    # leases began. The POST's nine tenths used to count from the answer,
    # so the lease ran out 200 ms before the POST was ended, and the
    # webhook's next pull found it expired: A went out again while its
    # first POST was in flight, or was dead-lettered without its error.
    post_outlives_its_lease({"MOONTIDE_TEST_SYNC_DELAY": "300"})


def post_outlives_its_lease(env=None):
    # The receiver answers A only after 2 s, with a lease of 1 s. The lease
    # used to expire under the POST: A went out again while the first was in
    # flight, its 200s settled nothing, and B was sent before A was done.
    # Now each POST ends at nine tenths of the lease and counts as a failed
    # attempt, so A is dead-lettered saying so, and only then B goes out.
    def behaviour(wid, attempt):
        if wid == a_id[0]:
            time.sleep(2)
        return 204, {}

    a_id = [None]
    r = Receiver(behaviour)
    try:
        cfg = config(r.port, "    lease: 1s\n")
        with open(cfg) as f:
            text = f.read().replace("max_attempts: 5", "max_attempts: 2")
        with open(cfg, "w") as f:
            f.write(text)
        with Engine(config=cfg, env=env) as e:
            e.request("POST", "/subscriptions/hook/pause")
            st, ans = e.publish(mtlib.event("a", subject="s", type_="order.placed"))
            a_id[0] = "hook-" + ans["events"][0]["sequence"]
            e.publish(mtlib.event("b", subject="s", type_="order.placed"))
            e.request("POST", "/subscriptions/hook/resume")
            s = wait_for(lambda: (lambda s: s["handled"] == 1 and s)(
                json.loads(e.request("GET", "/subscriptions/hook")[2])), what="b delivered")
            assert s["dlq"] == 1, s
            dlq = json.loads(e.request("GET", "/subscriptions/hook/dlq")[2])
            errs = [x["error"] for x in dlq[0]["errors"]]
            assert len(errs) == 2 and all(
                x.endswith("/hooks/orders: no answer within 900 ms (nine tenths of the lease)")
                for x in errs), errs
            with r.lock:
                ids = [c[1]["id"] for c in r.calls]
            assert ids == ["e-a", "e-a", "e-b"], ids
    finally:
        r.close()


def test_retry_after_as_a_date_is_honoured():
    def behaviour(wid, attempt):
        times.append(time.monotonic())
        if attempt == 1:
            at = time.gmtime(time.time() + 3)
            return 503, {"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT", at)}
        return 204, {}

    times = []
    r = Receiver(behaviour)
    try:
        with Engine(config=config(r.port)) as e:
            e.publish(mtlib.event("d", type_="order.placed"))
            wait_for(lambda: json.loads(e.request("GET", "/subscriptions/hook")[2])["handled"] == 1,
                     what="the delivery")
            # The date is whole seconds 3 s ahead: at least 2 s, where the
            # backoff alone (50 ms) would have retried at once.
            assert len(times) == 2 and times[1] - times[0] >= 2.0, times
    finally:
        r.close()


mtlib.main(globals())

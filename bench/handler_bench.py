#!/usr/bin/env python3
"""Handler throughput from a pre-filled log: N events are published, the
engine is restarted with subscriptions starting at the beginning, and the
time until every subscription has caught up gives events/s per case:
(a) an empty handler, (b) a handler updating a kv table, (c) four
subscriptions on the same topic (fan-out, kv handler), (d, e) the kv
handler with 2 and 3 workers, (f) a handler emitting one event per event.
Durability fsync.

With --callgrind the engine that catches up runs under valgrind's callgrind
and the table gives instructions per handled event instead of a rate: a
count that does not depend on what else the machine is doing (about 30 s
for 20,000 events to c-fanout4).

With --fields K each event's data carries K more string members of 16
characters (about 25 bytes of JSON each) besides "n": handlers that read
none of them show what decoding data they do not use costs.

With --keep DIR the callgrind output of each case is copied to
DIR/CASE.callgrind, for `callgrind_annotate --inclusive=yes`.

usage: bench/handler_bench.py [--events N] [--moontide PATH] [--cases a-empty,b-kv,...]
                              [--callgrind] [--fields K] [--keep DIR]"""
import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def start(moontide, data_dir, cfg, prefix=()):
    p = subprocess.Popen(list(prefix) + [moontide, "run", "-c", cfg, "--data-dir", data_dir,
                                         "--listen", "127.0.0.1:0"],
                         stderr=subprocess.PIPE, cwd=TOP)
    for raw in p.stderr:
        obj = json.loads(raw)
        if "port" in obj:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(obj["port"])
    raise SystemExit("engine did not start")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(120)


def req(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def config(path, subs):
    with open(path, "w") as f:
        f.write("version: 1\nengine:\n  map_size: 8GiB\n")
        if subs:
            f.write("subscriptions:\n")
            for sub in subs:
                name, handler = sub[0], sub[1]
                f.write("  %s:\n    topics: [\"bench.#\"]\n    handler: %s\n" % (name, handler))
                if len(sub) > 2:
                    f.write("    workers: %d\n" % sub[2])


def callgrind_total(path):
    """The instruction count callgrind wrote to 'path'."""
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit("no total in " + path)


def run_case(moontide, n, label, subs, tmp, callgrind=False, fields=0, keep=""):
    data = os.path.join(tmp, label)
    cfg0, cfg1 = os.path.join(tmp, label + "-0.yaml"), os.path.join(tmp, label + "-1.yaml")
    config(cfg0, [])
    config(cfg1, subs)
    p, port = start(moontide, data, cfg0)
    for b in range(0, n, 1000):
        evs = [{"specversion": "1.0", "id": "%s-%d" % (label, i), "source": "/bench",
                "type": "bench.event", "subject": "s-%d" % (i % 1000),
                "data": dict({"n": i}, **{"f%d" % f: "value-%010d" % (i + f) for f in range(fields)})}
               for i in range(b, min(n, b + 1000))]
        st, body = req(port, "POST", "/events", json.dumps(evs),
                       {"Content-Type": "application/cloudevents-batch+json"})
        assert st == 201, body[:200]
    stop(p)
    t0 = time.monotonic()
    prefix, out = (), None
    if callgrind:
        out = os.path.join(tmp, label + ".callgrind")
        prefix = ("valgrind", "--tool=callgrind", "--log-file=" + out + ".log",
                  "--callgrind-out-file=" + out)
    p, port = start(moontide, data, cfg1, prefix)
    while True:
        st, body = req(port, "GET", "/subscriptions")
        subs_st = json.loads(body)
        if all(s["lag"] == 0 for s in subs_st):
            break
        time.sleep(0.2 if callgrind else 0.02)
    secs = time.monotonic() - t0
    handled = sum(s["handled"] for s in subs_st)
    stop(p)
    if callgrind:
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(out, os.path.join(keep, label + ".callgrind"))
        return handled, callgrind_total(out)
    return handled, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100000)
    ap.add_argument("--moontide", default=os.path.join(TOP, "build-bench", "moontide"))
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--callgrind", action="store_true",
                    help="count instructions under callgrind instead of timing")
    ap.add_argument("--fields", type=int, default=0,
                    help="string members of 16 characters added to each event's data")
    ap.add_argument("--keep", default="",
                    help="with --callgrind: copy each case's callgrind output to this directory")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="moontide-hbench-", dir=os.environ.get("BENCH_DIR", TOP))
    try:
        cases = [
            ("a-empty", [("empty", "bench/handlers/empty.lua")]),
            ("b-kv", [("kv", "bench/handlers/kv.lua")]),
            ("c-fanout4", [("kv%d" % i, "bench/handlers/kv.lua") for i in range(4)]),
            ("d-kv-w2", [("kv", "bench/handlers/kv.lua", 2)]),
            ("e-kv-w3", [("kv", "bench/handlers/kv.lua", 3)]),
            ("f-emit", [("emit", "bench/handlers/emit.lua")]),
            ("g-cpu", [("cpu", "bench/handlers/cpu.lua")]),
            ("h-cpu-w2", [("cpu", "bench/handlers/cpu.lua", 2)]),
        ]
        if a.cases:
            wanted = a.cases.split(",")
            unknown = set(wanted) - {label for label, _ in cases}
            if unknown:
                raise SystemExit("unknown cases: " + ", ".join(sorted(unknown)))
            cases = [c for c in cases if c[0] in wanted]
        if a.callgrind:
            print("%-12s %10s %16s %14s" % ("case", "handled", "instructions", "instr/handled"))
        else:
            print("%-12s %10s %10s %14s" % ("case", "handled", "secs", "handled/s"))
        for label, subs in cases:
            handled, m = run_case(a.moontide, a.events, label, subs, tmp, a.callgrind, a.fields,
                                 a.keep)
            if a.callgrind:
                print("%-12s %10d %16d %14.0f" % (label, handled, m, m / handled), flush=True)
            else:
                print("%-12s %10d %10.2f %14.0f" % (label, handled, m, handled / m), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

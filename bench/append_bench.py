#!/usr/bin/env python3
"""What an append costs the engine's threads: N events are published to a
fresh engine (durability fsync) in batches of 500 over two connections, as
fast as it answers, and the table gives the time taken and the CPU seconds
of the loop, checkpoint, sync and writer threads over it. The events have ids in
no order (as UUIDs come) or in order (--ordered-ids), over 1,000 subjects.
The bodies are made before the clock starts, so the client's cost is the
HTTP exchange alone; it runs on the same machine and is not counted.

With --callgrind the engine runs under valgrind's callgrind and the table
gives instructions per event in mt_log_append (the stream index's bulk
steps included) and in all of the engine: counts that do not depend on
what else the machine is doing.

usage: bench/append_bench.py [--events N] [--rounds R] [--ordered-ids]
                             [--moontide PATH] [--callgrind]"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handler_bench import TOP, callgrind_total, start, stop  # noqa: E402

BATCH = 500


def bodies(n, ordered):
    out = []
    for b in range(0, n, BATCH):
        evs = []
        for i in range(b, min(n, b + BATCH)):
            eid = "e-%09d" % i if ordered else "%08x-%d" % ((i * 2654435761) & 0xFFFFFFFF, i)
            evs.append({"specversion": "1.0", "id": eid, "source": "/bench",
                        "type": "bench.event", "subject": "s-%d" % (i % 1000), "data": {"n": i}})
        out.append(json.dumps(evs))
    return out


def thread_cpu(pid):
    """CPU seconds of each thread of 'pid' by name: the main thread is "loop"."""
    hz = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
            name = "loop" if int(t) == pid else f.read().strip()
        cpu[name] = cpu.get(name, 0) + (int(fields[11]) + int(fields[12])) / hz
    return cpu


def publish(port, part):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for body in part:
        c.request("POST", "/events", body, {"Content-Type": "application/cloudevents-batch+json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 201:
            raise SystemExit("publish answered %d: %s" % (r.status, data[:200]))
    c.close()


def run(moontide, n, ordered, tmp, callgrind):
    data = os.path.join(tmp, "data")
    shutil.rmtree(data, ignore_errors=True)
    cfg = os.path.join(tmp, "c.yaml")
    with open(cfg, "w") as f:
        f.write("version: 1\nengine:\n  map_size: 8GiB\n  durability: fsync\n")
    out = os.path.join(tmp, "callgrind.out")
    prefix = ("valgrind", "--tool=callgrind", "--log-file=" + out + ".log",
              "--callgrind-out-file=" + out) if callgrind else ()
    made = bodies(n, ordered)
    p, port = start(moontide, data, cfg, prefix)
    c0, t0 = thread_cpu(p.pid), time.monotonic()
    ths = [threading.Thread(target=publish, args=(port, made[k::2])) for k in range(2)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    secs, c1 = time.monotonic() - t0, thread_cpu(p.pid)
    stop(p)
    if callgrind:
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", out],
                             capture_output=True, text=True).stdout
        append = 0
        for line in ann.splitlines():
            if line.rstrip().endswith("]") and ":mt_log_append [" in line:
                append = int(line.split()[0].replace(",", ""))
        return append / n, callgrind_total(out) / n
    # The engine names its threads: writer, sync, checkpoint.
    used = {t: c1[t] - c0.get(t, 0) for t in c1}
    return secs, used.get("loop", 0), used.get("checkpoint", 0), used.get("sync", 0), \
        used.get("writer", 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ordered-ids", action="store_true")
    ap.add_argument("--moontide", default=os.path.join(TOP, "build-bench", "moontide"))
    ap.add_argument("--callgrind", action="store_true",
                    help="count instructions under callgrind instead of timing")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="moontide-abench-", dir=os.environ.get("BENCH_DIR", TOP))
    ids = "ordered" if a.ordered_ids else "no order"
    try:
        if a.callgrind:
            print("%10s %10s %16s %16s" % ("events", "ids", "append instr/ev", "engine instr/ev"))
            per_append, per_all = run(a.moontide, a.events, a.ordered_ids, tmp, True)
            print("%10d %10s %16.0f %16.0f" % (a.events, ids, per_append, per_all))
            return
        print("%6s %10s %10s %8s %10s %8s %8s %8s %8s %12s" % (
            "round", "events", "ids", "secs", "events/s", "loop s", "ckpt s", "sync s",
            "writer s", "writer us/ev"))
        for r in range(a.rounds):
            secs, loop, ckpt, sync, writer = run(a.moontide, a.events, a.ordered_ids, tmp, False)
            print("%6d %10d %10s %8.2f %10.0f %8.2f %8.2f %8.2f %8.2f %12.2f" % (
                r + 1, a.events, ids, secs, a.events / secs, loop, ckpt, sync, writer,
                1e6 * writer / a.events), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

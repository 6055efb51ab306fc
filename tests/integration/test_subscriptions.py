"""Lua handlers on durable subscriptions, against the real engine: exactly-once
effects across kill -9, per-subject order, retries, dead letters and redrive,
poison messages, emitted events, and the HTTP views of it all."""
import contextlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

import mtlib
from mtlib import Engine, wait_for

SEED = int(time.time()) % 100000


def config(subs, extra_engine=""):
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nengine:\n" + extra_engine + "  durability: fsync\nsubscriptions:\n" + subs)
    return path




def status(e, name):
    st, _, body = e.request("GET", "/subscriptions/" + name)
    assert st == 200, (st, body)
    return json.loads(body)


def handler_file(text):
    """Writes a handler to a directory of its own; its path."""
    path = os.path.join(tempfile.mkdtemp(prefix="moontide-h-"), "h.lua")
    with open(path, "w") as f:
        f.write(text)
    return path


def table(e, name, prefix=""):
    st, _, body = e.request("GET", "/tables/%s?prefix=%s&limit=10000" % (name, prefix))
    assert st == 200, (st, body)
    return json.loads(body)


def test_counting_handler_is_exact_across_kill9_and_keeps_subject_order():
    rng = random.Random(SEED)
    print("# seed %d" % SEED)
    cfg = config("  counter:\n    topics: [\"count.#\"]\n    handler: tests/lua/handlers/count.lua\n"
                 "    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 50ms }\n")
    e = Engine(config=cfg).start()
    try:
        sent = {}
        total = 10000
        i = 0
        conn = e.conn()
        while i < total:
            batch = []
            for _ in range(100):
                subj = "s%02d" % rng.randrange(100)
                batch.append(mtlib.event("c%d" % i, subject=subj, type_="count.it"))
                sent[subj] = sent.get(subj, 0) + 1
                i += 1
            st, body = e.publish_batch(batch, conn=conn)
            assert st == 201, body
            if rng.random() < 0.05:
                e.kill()  # mid-delivery, at a random moment
                e.start()
                conn = e.conn()
        wait_for(lambda: status(e, "counter")["lag"] == 0, what="the counter to catch up")
        e.kill()
        e.start()
        wait_for(lambda: status(e, "counter")["lag"] == 0, what="the counter after restart")
        counts = table(e, "counts")
        assert counts == sent, "counts differ: %r" % {k: (counts.get(k), v) for k, v in sent.items() if counts.get(k) != v}
        s = status(e, "counter")
        assert s["dlq"] == 0 and s["retrying"] == 0, s
        assert s["handled"] == total, s
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_flaky_handler_succeeds_on_the_third_attempt():
    cfg = config("  flaky:\n    topics: [\"flaky.*\"]\n    handler: tests/lua/handlers/flaky.lua\n"
                 "    retry: { max_attempts: 5, backoff: 20ms, max_backoff: 100ms }\n")
    with Engine(config=cfg) as e:
        for i in range(5):
            assert e.publish(mtlib.event("f%d" % i, subject="f%d" % i, type_="flaky.one"))[0] == 201
        done = wait_for(lambda: len(table(e, "flaky")) == 5 and table(e, "flaky"), what="flaky")
        assert all(v == 3 for v in done.values()), done
        s = status(e, "flaky")
        assert s["retried"] == 10 and s["dlq"] == 0 and s["handled"] == 5, s


def test_topics_pick_their_events_from_a_log_of_mixed_types():
    """A log where types come in runs and alternate, some matching a
    subscription's topics and some not, and some events without the
    filter's field: it gets exactly the events of its topics that pass the
    filter, each once."""
    cfg = config("  mixed:\n    topics: [\"order.*\", \"pay.#\"]\n"
                 "    filter: { not: { exact: { \"data.skip\": \"yes\" } } }\n"
                 "    handler: tests/lua/handlers/record.lua\n")
    types = ["order.placed", "order.placed", "audit.x", "pay.card.ok", "order.placed.late",
             "pay", "order.placed", "audit.x", "audit.x", "pay.card.ok", "other"]
    rng = random.Random(SEED)
    evs, want = [], set()
    for i in range(600):
        t = types[(i // 3 + rng.randrange(2)) % len(types)]
        skip = rng.random() < 0.1
        evs.append(mtlib.event("m%d" % i, subject="s%d" % (i % 5), type_=t,
                               data={"skip": "yes" if skip else "no"}))
        if (t.startswith("order.") and t.count(".") == 1 or t == "pay" or t.startswith("pay.")) \
                and not skip:
            want.add(evs[-1]["id"])
    with Engine(config=cfg) as e:
        for k in range(0, len(evs), 100):
            st, ans = e.publish_batch(evs[k:k + 100])
            assert st == 201, ans
        wait_for(lambda: status(e, "mixed")["lag"] == 0, what="caught up")
        seen = table(e, "seen")
        assert set(seen) == want, (sorted(set(seen) - want)[:5], sorted(want - set(seen))[:5])
        assert status(e, "mixed")["handled"] == len(want)


def test_failing_handler_dead_letters_with_traceback_and_redrive_after_fix():
    d = tempfile.mkdtemp(prefix="moontide-h-")
    handler = os.path.join(d, "h.lua")
    shutil.copy(os.path.join(mtlib.SRCDIR, "tests/lua/handlers/broken_v1.lua"), handler)
    cfg = config("  orders:\n    topics: [\"order.*\"]\n    handler: %s\n"
                 "    retry: { max_attempts: 2, backoff: 10ms, max_backoff: 20ms }\n" % handler)
    e = Engine(config=cfg).start()
    try:
        for i in range(3):
            e.publish(mtlib.event("o%d" % i, subject="order-%d" % i, type_="order.placed", data={"total": i}))
        dlq = wait_for(lambda: (lambda s, b: len(json.loads(b)) == 3 and json.loads(b))(
            *e.request("GET", "/subscriptions/orders/dlq")[::2]), what="3 dead letters")
        for entry in dlq:
            assert entry["reason"] == "retries exhausted", entry
            assert len(entry["errors"]) == 2, entry
            assert "attempt to index a nil value" in entry["errors"][0]["error"], entry
            assert "stack traceback" in entry["errors"][0]["traceback"], entry
        assert status(e, "orders")["dead_lettered"] == 3
        assert status(e, "orders")["dlq"] == 3  # a kept count, no longer a walk over them
        env = {"MOONTIDE_URL": e.url()}
        rc, out, err = mtlib.run_cli("dlq", "list", "orders", env=env)
        assert rc == 0 and len(out.splitlines()) == 3, (rc, out, err)
        seq = json.loads(out.splitlines()[1])["sequence"]
        rc, out, err = mtlib.run_cli("dlq", "show", "orders", seq, env=env)
        assert rc == 0 and json.loads(out)["sequence"] == seq and "traceback" in out, (rc, out, err)
        rc, out, err = mtlib.run_cli("dlq", "show", "orders", "999", env=env)
        assert rc == 65, (rc, err)
        rc, out, err = mtlib.run_cli("dlq", "list", "nope", env=env)
        assert rc == 65 and "404" in err, (rc, err)
        # --url where the usage line shows it; 0 names no event.
        rc, out, err = mtlib.run_cli("dlq", "show", "orders", seq, "--url", e.url())
        assert rc == 0 and json.loads(out)["sequence"] == seq, (rc, out, err)
        for action in ("show", "redrive", "purge"):
            rc, out, err = mtlib.run_cli("dlq", action, "orders", "0", env=env)
            assert rc == 64 and "from 1" in err, (action, rc, err)
        assert e.stop() == 0
        # The fix: a handler that works, then redrive.
        with open(handler, "w") as f:
            f.write("return function(e, ctx) ctx.kv('fixed'):put(e.subject, e.data.total) end\n")
        e.start()
        # sequence=0 names no event: once it redrove (or purged) them all.
        for method, path in (("POST", "/dlq/redrive"), ("DELETE", "/dlq")):
            st, _, body = e.request(method, "/subscriptions/orders" + path + "?sequence=0")
            assert st == 400 and b"'sequence'" in body, (method, st, body)
        assert len(json.loads(e.request("GET", "/subscriptions/orders/dlq")[2])) == 3
        assert status(e, "orders")["dlq"] == 3  # kept across the restart
        rc, out, err = mtlib.run_cli("dlq", "redrive", "orders", "--url", e.url())
        assert rc == 0 and out == "redrove 3 dead letter(s)\n", (rc, out, err)
        assert status(e, "orders")["dlq"] == 0
        fixed = wait_for(lambda: len(table(e, "fixed")) == 3 and table(e, "fixed"), what="redrive")
        assert fixed == {"order-0": 0, "order-1": 1, "order-2": 2}, fixed
        st, _, body = e.request("GET", "/subscriptions/orders/dlq")
        assert json.loads(body) == []
        # Purge answers with a count too.
        st, _, body = e.request("DELETE", "/subscriptions/orders/dlq")
        assert st == 200 and json.loads(body)["count"] == 0
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_sighup_loads_handlers_again_and_a_redrive_runs_the_fix():
    # The fix reaches a running engine without a restart: SIGHUP loads the
    # handler again (it ended the process before). A handler that does not
    # compile is logged with its file and line, and the running code goes on.
    v1 = "return function(e, ctx) if e.subject == 'bad' then error('broken') end " \
         "ctx.kv('v'):put(e.subject, 1) end\n"
    for workers in (1, 2):
        handler = handler_file(v1)
        cfg = config("  h:\n    topics: [\"t.x\"]\n    handler: %s\n    workers: %d\n"
                     "    retry: { max_attempts: 1 }\n" % (handler, workers))
        try:
            with Engine(config=cfg) as e:
                def logged(text):
                    return wait_for(lambda: any(text in line for line in e.stderr_lines),
                                    what="a log line with " + text)

                e.publish(mtlib.event("a%d" % workers, subject="s1", type_="t.x"))
                e.publish(mtlib.event("b%d" % workers, subject="bad", type_="t.x"))
                wait_for(lambda: table(e, "v") == {"s1": 1} and status(e, "h")["dlq"] == 1,
                         what="v1 ran")
                with open(handler, "w") as f:
                    f.write("return function(e, ctx) ctx.kv('v'):put(e.subject, 2) end end\n")
                e.proc.send_signal(signal.SIGHUP)
                logged("h.lua:1:")
                logged("the handler loaded before goes on running")
                e.publish(mtlib.event("c%d" % workers, subject="s2", type_="t.x"))
                wait_for(lambda: table(e, "v").get("s2") == 1, what="v1 still running")
                with open(handler, "w") as f:
                    f.write("return function(e, ctx) ctx.kv('v'):put(e.subject, 2) end\n")
                e.proc.send_signal(signal.SIGHUP)
                logged("subscription 'h': handler reloaded")
                e.publish(mtlib.event("d%d" % workers, subject="s3", type_="t.x"))
                wait_for(lambda: table(e, "v").get("s3") == 2, what="v2 running")
                st, _, body = e.request("POST", "/subscriptions/h/dlq/redrive")
                assert st == 200 and json.loads(body) == {"count": 1}, body
                wait_for(lambda: table(e, "v").get("bad") == 2, what="the redrive run by the fix")
                assert e.proc.poll() is None
                assert table(e, "v") == {"s1": 1, "s2": 1, "s3": 2, "bad": 2}, table(e, "v")
                s = status(e, "h")
                assert s["dlq"] == 0 and s["handled"] == 4, s
        finally:
            shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


STUCK = ("local _ = ('a'):rep(3000):find(('a*'):rep(12) .. 'b')\n"
         "return function(e, ctx) ctx.kv('v'):put(e.subject, 9) end\n")


def put_v(n):
    """A handler that puts n at the event's subject in table v."""
    return "return function(e, ctx) ctx.kv('v'):put(e.subject, %d) end\n" % n


@contextlib.contextmanager
def one_handler(code, settings="", **engine):
    """A running engine whose subscription h (topic t.x) has a handler file
    holding 'code', with 'settings' (YAML lines); yields (engine, file)."""
    handler = handler_file(code)
    cfg = config("  h:\n    topics: [\"t.x\"]\n    handler: %s\n%s" % (handler, settings))
    try:
        with Engine(config=cfg, **engine) as e:
            yield e, handler
    finally:
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def rewrite(path, code):
    with open(path, "w") as f:
        f.write(code)


def logged(e, text, **kw):
    """Waits for a log line holding text; returns it."""
    return wait_for(lambda: next((l for l in e.stderr_lines if text in l), None),
                    what="a log line with " + text, **kw)


def trial_of(e, handler, other_than=None):
    """The pid of the trial load of 'handler' the engine runs (not 'other_than'), once it runs."""
    def find():
        for pid, cmdline in mtlib.children(e.proc.pid):
            if cmdline[1:4] == ["check", "--handler", handler] and mtlib.alive(pid) \
                    and pid != other_than:
                return pid
        return None
    return wait_for(find, what="the trial load of " + handler)


def cpu_ticks(pid):
    """CPU time process pid has used, in clock ticks (0 once it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


# A top level that runs for seconds in Lua, well after the file was read.
SLOW = "local n = 0\nfor i = 1, 3e8 do n = n + 1 end\n"
SLOW_LIMITS = "    limits: { instructions: 10000000000, time: 60s }\n"


def test_a_reload_stuck_loading_leaves_the_engine_on_the_code_it_runs():
    # The top level of a handler can be stuck in one C function, which no
    # instruction budget stops; at a reload that ended the engine (exit 75)
    # and the next start refused the file. A reload now loads each handler
    # first in a child process, stopped past limits.time.
    with one_handler(put_v(1), "    workers: 2\n    limits: { time: 1s }\n") as (e, handler):
        rewrite(handler, STUCK)
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "h.lua: its top-level code ran past its time limit (1000 ms) and was stopped")
        logged(e, "the handler loaded before goes on running")
        e.publish(mtlib.event("a", subject="s1", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s1": 1}, what="the old handler still running")
        rewrite(handler, "local x = nil .. 'x'\nreturn function() end\n")
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "h.lua:1: attempt to concatenate a nil value")
        rewrite(handler, put_v(3))
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "subscription 'h': handler reloaded")
        e.publish(mtlib.event("b", subject="s2", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s1": 1, "s2": 3}, what="the fixed handler")
        assert e.proc.poll() is None
        stuck = os.path.join(e.data_dir, "stuck.json")
        assert not os.path.exists(stuck), open(stuck).read()
        # No trial process is left behind.
        assert mtlib.children(e.proc.pid) == []


def test_a_trial_load_ends_with_the_engine():
    # A trial whose handler is stuck in one C function lived on for its
    # whole limits.time after the engine was killed.
    with one_handler(put_v(1), "    limits: { time: 120s }\n") as (e, handler):
        rewrite(handler, STUCK)
        e.proc.send_signal(signal.SIGHUP)
        pid = trial_of(e, handler)
        e.kill()
        wait_for(lambda: not mtlib.alive(pid), what="the trial to end with the engine")


def test_a_sighup_during_a_trial_starts_it_over_on_the_file_as_it_is():
    # A SIGHUP while a trial ran was refused until limits.time ended it.
    with one_handler(put_v(1), "    limits: { time: 1h }\n") as (e, handler):
        rewrite(handler, STUCK)
        e.proc.send_signal(signal.SIGHUP)
        stuck = trial_of(e, handler)
        rewrite(handler, put_v(2))
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "subscription 'h': handler reloaded")
        assert not mtlib.alive(stuck)
        e.publish(mtlib.event("a", subject="s1", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s1": 2}, what="the mended handler running")


def test_a_failed_trial_reports_the_error_after_whatever_the_handler_printed():
    # The report kept the first 4 KiB the trial wrote: a top level that
    # printed more pushed the reason out of the log line.
    with one_handler(put_v(1)) as (e, handler):
        rewrite(handler, "for i = 1, 200 do print(('x'):rep(100)) end\n"
                         "error('the reason')\nreturn function() end\n")
        e.proc.send_signal(signal.SIGHUP)
        msg = json.loads(logged(e, "handler not reloaded"))["msg"]
        assert "h.lua:2: the reason" in msg and "xxxx" not in msg, msg
        # An error without a message is still a refusal, not a trial that could not run.
        rewrite(handler, "error('', 0)\nreturn function() end\n")
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "h.lua: did not load, with an empty error message")
        assert not any("loading it untried" in l for l in e.stderr_lines), e.stderr_lines


def test_a_handler_changed_while_it_was_tried_is_tried_again():
    # What the engine loaded was the file read again after the trial: a file
    # saved meanwhile ran untried, and a stuck top level ended the engine
    # (exit 75). Here the file is changed once the trial runs its slow top
    # level; the stuck version is then tried too, and never loaded.
    with one_handler(put_v(1), SLOW_LIMITS) as (e, handler):
        rewrite(handler, SLOW + put_v(2))
        e.proc.send_signal(signal.SIGHUP)
        first = trial_of(e, handler)
        wait_for(lambda: cpu_ticks(first) >= 50 or not mtlib.alive(first),
                 what="the trial to run its top level")
        assert mtlib.alive(first), "the trial ended before the file could be changed"
        rewrite(handler + ".new", STUCK)
        os.rename(handler + ".new", handler)
        second = wait_for(lambda: e.proc.poll() is not None or trial_of(e, handler, first),
                          timeout=300, what="the changed file tried")
        assert e.proc.poll() is None, "the engine ended (exit %d): it loaded the file " \
            "changed after the trial" % e.proc.poll()
        rewrite(handler, put_v(3))
        e.proc.send_signal(signal.SIGHUP)  # ends the stuck trial, tries the mended file
        logged(e, "subscription 'h': handler reloaded")
        assert not mtlib.alive(second)
        e.publish(mtlib.event("a", subject="s1", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s1": 3}, what="the mended handler running")


def test_a_reload_loads_every_state_from_the_text_its_trial_loaded():
    # With workers, the engine read the file once per Lua state after the
    # trial, running its top level each time: a file saved meanwhile was
    # loaded untried into the later states (a stuck one ended the engine).
    limits = "    workers: 2\n    limits: { instructions: 10000000000, time: 10s }\n"
    with one_handler(put_v(1), limits) as (e, handler):
        rewrite(handler, "local n = 0\nfor i = 1, 1e8 do n = n + 1 end\n" + put_v(2))
        e.proc.send_signal(signal.SIGHUP)
        trial = trial_of(e, handler)
        wait_for(lambda: not mtlib.alive(trial), timeout=300, what="the trial to end")
        rewrite(handler + ".new", STUCK)  # while the engine loads its three states
        os.rename(handler + ".new", handler)
        wait_for(lambda: e.proc.poll() is not None
                 or any("subscription 'h': handler reloaded" in l for l in e.stderr_lines),
                 timeout=300, what="the reload")
        assert e.proc.poll() is None, "the engine ended (exit %d)" % e.proc.poll()
        for i in range(20):
            e.publish(mtlib.event("a%d" % i, subject="s%d" % i, type_="t.x"))
        wait_for(lambda: len(table(e, "v")) == 20, what="20 events handled")
        assert set(table(e, "v").values()) == {2}, table(e, "v")


def test_a_handler_path_that_is_a_fifo_does_not_hold_the_engine():
    # The engine read the handler file on its loop thread before and after
    # each trial: a FIFO there held every request for good.
    with one_handler(put_v(1), "    limits: { time: 1s }\n") as (e, handler):
        os.remove(handler)
        os.mkfifo(handler)
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "handler not reloaded")
        st, _, _ = e.request("GET", "/subscriptions/h")
        assert st == 200
        e.publish(mtlib.event("a", subject="s1", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s1": 1}, what="the old handler still running")


def dynamic_loader(path):
    """The PT_INTERP of a 64-bit little-endian ELF file, or None."""
    with open(path, "rb") as f:
        elf = f.read(1 << 16)
    if elf[:5] != b"\x7fELF\x02" or elf[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from("<I", elf, at)[0] == 3:
            off, = struct.unpack_from("<Q", elf, at + 8)
            size, = struct.unpack_from("<Q", elf, at + 32)
            return elf[off:off + size].rstrip(b"\0").decode()
    return None


def test_an_engine_whose_binary_cannot_run_a_trial_reloads_untried():
    # Started through the dynamic loader (or a debugger), /proc/self/exe is
    # not moontide: the trial could not run and every reload was refused.
    loader = dynamic_loader(mtlib.MOONTIDE)
    if not loader:
        raise mtlib.Skip("the engine's binary names no dynamic loader to start it through")
    with one_handler(put_v(1), prefix=[loader]) as (e, handler):
        rewrite(handler, put_v(2))
        e.proc.send_signal(signal.SIGHUP)
        logged(e, "subscription 'h': handler reloaded")
        logged(e, "cannot try the handler in a child process", timeout=0.1)
        e.publish(mtlib.event("a", subject="s1", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s1": 2}, what="the new handler running")


def test_a_sighup_while_the_engine_starts_is_done_once_it_serves():
    # A reload sent while the handlers load (a service manager's reload
    # right after the start) ended the process, as SIGHUP's default does;
    # then it was ignored, though the files may have changed after they
    # were read. The handler's top level takes a while, so the start is
    # seen in progress.
    handler = handler_file("local n = 0\nfor i = 1, 2e7 do n = n + 1 end\n"
                           "return function(e, ctx) ctx.kv('v'):put(e.subject, n) end\n")
    cfg = config("  h:\n    topics: [\"t.x\"]\n    handler: %s\n"
                 "    limits: { instructions: 1000000000, time: 600s }\n" % handler)
    e = Engine(config=cfg)
    sent = []

    def hup_while_starting():
        while e.proc is None:
            time.sleep(0.001)
        while e.port is None and e.proc.poll() is None:
            try:
                with open("/proc/%d/status" % e.proc.pid) as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                return
            held = (int(fields["SigBlk"], 16) | int(fields["SigIgn"], 16)) & 1
            if int(fields["SigCgt"], 16) & 1:
                return  # the start is over: too late to test it
            if held:
                sent.append(e.port is None)  # kept from ending it, and not yet serving
                e.proc.send_signal(signal.SIGHUP)
                return
            time.sleep(0.002)

    t = threading.Thread(target=hup_while_starting)
    t.start()
    try:
        e.start()
        t.join()
        assert sent == [True], "SIGHUP was left to end the process while it started"
        wait_for(lambda: any("subscription 'h': handler reloaded" in line
                             for line in e.stderr_lines), what="the reload, after the start")
        e.publish(mtlib.event("a", subject="s", type_="t.x"))
        wait_for(lambda: table(e, "v") == {"s": 20000000}, what="the handler ran")
        assert e.proc.poll() is None
    finally:
        t.join()
        e.cleanup()
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def test_events_held_behind_a_retrying_one_show_as_waiting():
    # lag is the log head minus the position, and the position moves past
    # events held behind their subject's failing head: 49 such events showed
    # nowhere in the status.
    handler = handler_file("return function(e, ctx) if e.subject == 'a' then error('no') end end\n")
    cfg = config("  h:\n    topics: [\"t.x\"]\n    handler: %s\n"
                 "    retry: { max_attempts: 3, backoff: 1h, max_backoff: 1h }\n" % handler)
    try:
        with Engine(config=cfg) as e:
            e.publish_batch([mtlib.event("a%d" % i, subject="a", type_="t.x") for i in range(50)]
                            + [mtlib.event("b%d" % i, subject="b%d" % i, type_="t.x")
                               for i in range(5)])
            s = wait_for(lambda: (lambda s: s["handled"] == 5 and s["retrying"] == 1 and s)(
                status(e, "h")), what="a's head retrying, the others handled")
            assert (s["lag"], s["waiting"], s["leased"]) == (0, 49, 0), s
    finally:
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def test_poison_messages_are_isolated_and_others_keep_flowing():
    cfg = config("  poison:\n    topics: [\"job.run\"]\n    handler: tests/lua/handlers/poison.lua\n"
                 "    retry: { max_attempts: 2, backoff: 10ms, max_backoff: 20ms }\n"
                 "    limits: { instructions: 200000, memory: 2MiB }\n")
    with Engine(config=cfg) as e:
        bad = {"loop": "instruction budget", "bomb": "memory limit", "pcall_loop": "instruction budget",
               "malformed": "attempt to", "reject": "not for us",
               "reject_bare": "rejected: no reason given"}
        for kind in bad:
            data = {"kind": kind, "amount": "abc"} if kind == "malformed" else {"kind": kind, "amount": 1}
            e.publish(mtlib.event("bad-" + kind, subject="bad-" + kind, type_="job.run", data=data))
        # Data nested deeper than Lua values may be: it can never reach the
        # handler, so it is dead-lettered at once (it was retried).
        deep = [1]
        for _ in range(150):
            deep = [deep]
        e.publish(mtlib.event("bad-deep", subject="bad-deep", type_="job.run", data=deep))
        for i in range(20):
            e.publish(mtlib.event("good%d" % i, subject="good%d" % (i % 4), type_="job.run",
                                  data={"kind": "ok", "amount": i}))
        ok = wait_for(lambda: len(table(e, "ok")) == 20 and table(e, "ok"), what="good events")
        assert sorted(ok.values()) == sorted(2 * i for i in range(20))
        dlq = wait_for(lambda: (lambda b: len(json.loads(b)) == 7 and json.loads(b))(
            e.request("GET", "/subscriptions/poison/dlq")[2]), what="7 dead letters")
        by_subject = {d["subject"]: d for d in dlq}
        for kind, text in bad.items():
            d = by_subject["bad-" + kind]
            assert text in d["errors"][-1]["error"], (kind, d)
        # Every failure says where, the memory bomb too (it had no traceback).
        for kind in ("loop", "bomb", "malformed"):
            tb = by_subject["bad-" + kind]["errors"][-1].get("traceback", "")
            assert "stack traceback:" in tb and "poison.lua:" in tb, (kind, tb)
        assert by_subject["bad-reject"]["reason"].startswith("rejected"), by_subject["bad-reject"]
        assert len(by_subject["bad-reject"]["errors"]) == 1  # no retries for a rejection
        assert by_subject["bad-reject_bare"]["reason"] == "rejected: no reason given"
        d = by_subject["bad-deep"]
        assert len(d["errors"]) == 1 and "nesting deeper than 128 levels" in d["reason"], d


def test_a_huge_error_is_kept_cut_in_the_dead_letter():
    # Kept whole, a 100 KB error was stored for every attempt kept and
    # written again at each one.
    cfg = config("  poison:\n    topics: [\"job.run\"]\n    handler: tests/lua/handlers/poison.lua\n"
                 "    retry: { max_attempts: 2, backoff: 10ms, max_backoff: 20ms }\n")
    with Engine(config=cfg) as e:
        for kind in ("huge", "huge_reject"):
            e.publish(mtlib.event(kind, subject=kind, type_="job.run", data={"kind": kind}))
        dlq = wait_for(lambda: (lambda b: len(json.loads(b)) == 2 and json.loads(b))(
            e.request("GET", "/subscriptions/poison/dlq")[2]), what="2 dead letters")
        by = {d["subject"]: d for d in dlq}
        errs = by["huge"]["errors"]
        assert len(errs) == 2 and by["huge"]["reason"] == "retries exhausted", by["huge"]
        for err in errs:
            assert err["error"] == "E" * 4096 + " ... (95904 more bytes cut)", err["error"][-40:]
        rej = by["huge_reject"]
        assert rej["reason"].startswith("rejected: RRR") and len(rej["reason"]) < 4200, len(rej["reason"])
        assert rej["reason"].endswith("more bytes cut)"), rej["reason"][-40:]


def test_a_table_lists_keys_that_are_not_utf8():
    # Lua strings are bytes, so a key may be any; JSON keys may not. Such a
    # key was left out of the listing, which then held fewer than asked for,
    # and so was a value holding a NUL.
    handler = handler_file("return function(e, ctx)\n"
                           "  local t = ctx.kv('bytes')\n"
                           "  t:put('caf\\233', 1)\n"
                           "  t:put('nul', 'a\\0b')\n"
                           "  t:put('ok', 2)\n"
                           "  t:put('z\\255', t:get('caf\\233') + 2)\n"
                           "end\n")
    cfg = config("  b:\n    topics: [\"b.x\"]\n    handler: %s\n" % handler)
    try:
        with Engine(config=cfg) as e:
            e.publish(mtlib.event("b1", type_="b.x"))
            wait_for(lambda: status(e, "b")["handled"] == 1, what="one handled")
            assert table(e, "bytes") == {"caf\ufffd": 1, "nul": "a\0b", "ok": 2, "z\ufffd": 3}, \
                table(e, "bytes")
            st, _, body = e.request("GET", "/tables/bytes?limit=3")
            assert st == 200 and json.loads(body) == {"caf\ufffd": 1, "nul": "a\0b", "ok": 2}, body
            st, _, body = e.request("GET", "/tables/bytes/caf%E9")
            assert st == 200 and json.loads(body) == 1, (st, body)
    finally:
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def runs_larger_than_the_write_ahead_file(workers):
    handler = handler_file(
        "return function(e, ctx)\n"
        "  local t = ctx.kv('big')\n"
        "  for i = 1, e.data.parts do t:put(e.id .. '/' .. i, ('x'):rep(200000)) end\n"
        "end\n")
    cfg = config("  big:\n    topics: [\"big.x\"]\n    handler: %s\n    workers: %d\n"
                 % (handler, workers), extra_engine="  wal_size: 1MiB\n")
    try:
        with Engine(config=cfg) as e:
            assert e.request("POST", "/subscriptions/big/pause")[0] == 200
            for i in range(30):
                e.publish(mtlib.event("b%d" % i, subject="s%d" % (i % 3), type_="big.x",
                                      data={"parts": 1}))
            e.publish(mtlib.event("huge", subject="h", type_="big.x", data={"parts": 3}))
            assert e.request("POST", "/subscriptions/big/resume")[0] == 200
            s = wait_for(lambda: (lambda s: s["position"] == 31 and s)(status(e, "big")),
                         timeout=60, what="all 31 events taken")
            assert s["handled"] == 30 and s["dlq"] == 1, s
            # Each job stops after a run or two (what one job may write);
            # the next applies the rest of the workers' round, not the writer.
            assert workers == 1 or (s["run_ahead"] == 31 and s["run_again"] == 0), s
            dlq = json.loads(e.request("GET", "/subscriptions/big/dlq")[2])
            assert dlq[0]["subject"] == "h" and len(dlq[0]["errors"]) == 1, dlq
            assert "of the write-ahead file, more than half" in dlq[0]["reason"], dlq
            assert len(table(e, "big")) == 30
            assert not any("does not fit the write-ahead file" in l for l in e.stderr_lines)
    finally:
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def test_runs_larger_than_the_write_ahead_file_allows_neither_stall_nor_block():
    # A backlog of runs that each write 200 KB was packed into one dispatch
    # job too large for a 1 MiB write-ahead file: refused, retried whole
    # every second, for ever. A run whose own effects could never fit (600
    # KB) was retried the same way and held back every other subject.
    runs_larger_than_the_write_ahead_file(1)


def test_runs_larger_than_the_write_ahead_file_with_workers_alike():
    runs_larger_than_the_write_ahead_file(2)
    # A worker's result was applied without its size: a 600 KB run was
    # committed, and one larger than a whole write failed its dispatch job.
    handler = handler_file(
        "return function(e, ctx)\n"
        "  local t = ctx.kv('big')\n"
        "  for i = 1, e.data.parts do t:put(e.id .. '/' .. i, ('x'):rep(e.data.size)) end\n"
        "end\n")
    cfg = config("  big:\n    topics: [\"big.x\"]\n    handler: %s\n    workers: 2\n"
                 % handler, extra_engine="  wal_size: 1MiB\n")
    try:
        with Engine(config=cfg) as e:
            assert e.request("POST", "/subscriptions/big/pause")[0] == 200
            e.publish(mtlib.event("half", subject="h", type_="big.x",
                                  data={"parts": 3, "size": 200000}))
            e.publish(mtlib.event("whole", subject="w", type_="big.x",
                                  data={"parts": 3, "size": 400000}))
            e.publish(mtlib.event("small", subject="s", type_="big.x",
                                  data={"parts": 1, "size": 10}))
            assert e.request("POST", "/subscriptions/big/resume")[0] == 200
            s = wait_for(lambda: (lambda s: s["position"] == 3 and s)(status(e, "big")),
                         timeout=60, what="all 3 events taken")
            assert s["handled"] == 1 and s["dlq"] == 2, s
            dlq = json.loads(e.request("GET", "/subscriptions/big/dlq")[2])
            assert [d["subject"] for d in dlq] == ["h", "w"], dlq
            assert all("of the write-ahead file, more than half" in d["reason"] for d in dlq), dlq
            assert list(table(e, "big")) == ["e-small/1"]
            assert not any("does not fit the write-ahead file" in l for l in e.stderr_lines)
    finally:
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)
    # Many small keys: each key's overhead counts alike on the writer (past
    # 64 keys it used not to) and for a worker's result.
    many = handler_file(
        "return function(e, ctx)\n"
        "  local t = ctx.kv('many')\n"
        "  for i = 1, 3000 do t:put(tostring(i), ('x'):rep(140)) end\n"
        "end\n")
    try:
        for w in (1, 2):
            cfg = config("  many:\n    topics: [\"m.x\"]\n    handler: %s\n    workers: %d\n"
                         % (many, w), extra_engine="  wal_size: 1MiB\n")
            with Engine(config=cfg) as e:
                assert e.request("POST", "/subscriptions/many/pause")[0] == 200
                e.publish(mtlib.event("m", subject="m", type_="m.x"))
                assert e.request("POST", "/subscriptions/many/resume")[0] == 200
                s = wait_for(lambda: (lambda s: s["position"] == 1 and s)(status(e, "many")),
                             timeout=60, what="the event taken")
                assert s["handled"] == 0 and s["dlq"] == 1, (w, s)
    finally:
        shutil.rmtree(os.path.dirname(many), ignore_errors=True)


def test_a_subscription_stuck_on_a_full_store_says_why():
    # Runs that each keep 200 KB fill a 2 MiB store while small events still
    # fit: each dispatch job then fails. The status said nothing (last_error
    # null) and every append logged a failure of its own.
    handler = handler_file("return function(e, ctx)\n"
                           "  ctx.kv('hog'):put(e.id, ('x'):rep(200000))\n"
                           "end\n")
    sub = "  hog:\n    topics: [\"hog.x\"]\n    handler: %s\n" % handler
    d = tempfile.mkdtemp(prefix="moontide-it-stall-")
    acked = 0
    t0 = time.monotonic()
    try:
        e = Engine(data_dir=d, config=config(sub, extra_engine="  map_size: 2MiB\n")).start()
        try:
            for i in range(40):
                st, _ = e.publish(mtlib.event("h%d" % i, subject="s", type_="hog.x"))
                assert st in (201, 507), st
                acked += st == 201
            s = wait_for(lambda: (lambda s: s["last_error"] and s)(status(e, "hog")),
                         what="the stall in the status")
            assert "store full" in s["last_error"] and s["position"] < acked, s
            assert table(e, "hog"), "no run fitted before the store was full"
            lines = [l for l in e.stderr_lines if "dispatch failed" in l]
            # One line when it starts, then one a minute.
            assert 1 <= len(lines) <= 1 + (time.monotonic() - t0) // 60, lines
            assert "store full" in lines[0], lines
        finally:
            assert e.stop() == 0, e.stderr_lines[-10:]
        # With room, every acknowledged event is handled and the error is gone.
        with Engine(data_dir=d, config=config(sub, extra_engine="  map_size: 64MiB\n")) as e:
            s = wait_for(lambda: (lambda s: s["handled"] == acked and s)(status(e, "hog")),
                         what="every acknowledged event handled")
            assert s["position"] == acked and s["last_error"] is None, s
            assert len(table(e, "hog")) == acked
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def test_a_dead_letter_queue_larger_than_the_write_ahead_file_is_redriven_once_and_purged():
    # Purging every dead letter was one writer job: 50,000 of them were more
    # than a 1 MiB write-ahead file takes, and the purge failed whole (500
    # "too big"); a million held every publish for over a second.
    handler = handler_file("return function(e, ctx) error('no') end\n")
    cfg = config("  f:\n    topics: [\"f.x\"]\n    handler: %s\n    retry: { max_attempts: 1 }\n"
                 % handler, extra_engine="  wal_size: 1MiB\n")
    try:
        with Engine(config=cfg) as e:
            for b in range(100):
                st, _ = e.publish_batch([mtlib.event("d%d" % (b * 500 + i), type_="f.x",
                                                     subject="s%d" % i) for i in range(500)])
                assert st == 201, st
            wait_for(lambda: status(e, "f")["dlq"] == 50000, timeout=120, what="50,000 dead letters")
            # The CLI lists them all (it stopped at the first 10,000, saying nothing).
            rc, out, err = mtlib.run_cli("dlq", "list", "f", "--url", e.url())
            seqs = [int(json.loads(line)["sequence"]) for line in out.splitlines()]
            assert rc == 0 and len(seqs) == 50000 and seqs == sorted(set(seqs)), (rc, len(seqs), err)
            first = json.loads(out.splitlines()[0])
            assert (first["id"], first["source"]) == ("e-d0", "/test"), first  # deduplication's pair
            # Asked for by a sequence that has no dead letter: 404, not "0 done".
            for method, path in (("POST", "/dlq/redrive"), ("DELETE", "/dlq")):
                st, _, body = e.request(method, "/subscriptions/f" + path + "?sequence=%d"
                                        % (seqs[-1] + 1))
                assert st == 404 and json.loads(body)["error"] == "dead letter not found", body
            rc, out, err = mtlib.run_cli("dlq", "redrive", "f", str(seqs[-1] + 1), "--url", e.url())
            assert rc != 0 and "dead letter not found" in err, (rc, out, err)
            # Redriven in runs of 10,000: events of the first runs failed
            # again before the later runs and were taken twice (the answer
            # said 66,000 and more for 50,000 letters). Each goes back once.
            st, _, body = e.request("POST", "/subscriptions/f/dlq/redrive")
            assert st == 200 and json.loads(body) == {"count": 50000}, (st, body)
            wait_for(lambda: (lambda s: s["dlq"] == 50000 and s["retrying"] == 0)(status(e, "f")),
                     timeout=120, what="the redriven events dead-lettered again")
            assert status(e, "f")["dead_lettered"] == 100000, status(e, "f")
            st, _, body = e.request("DELETE", "/subscriptions/f/dlq")
            assert st == 200 and json.loads(body) == {"count": 50000}, (st, body)
            assert status(e, "f")["dlq"] == 0
            assert json.loads(e.request("GET", "/subscriptions/f/dlq")[2]) == []
    finally:
        shutil.rmtree(os.path.dirname(handler), ignore_errors=True)


def test_a_new_wal_size_applies_to_an_existing_data_directory():
    # The write-ahead file kept the size it was made with, silently.
    cfg1 = config("  c:\n    topics: [\"c.x\"]\n    deliver: pull\n",
                  extra_engine="  wal_size: 1MiB\n")
    e = Engine(config=cfg1)
    try:
        e.start()
        for i in range(20):
            e.publish(mtlib.event("w%d" % i, subject="s", type_="c.x"))
        before = e.read_all()
        wal = os.path.join(e.data_dir, "wal")
        assert os.path.getsize(wal) == 1 << 20
        e.kill()  # the next start recovers from the file, then makes it anew
        e.config = config("  c:\n    topics: [\"c.x\"]\n    deliver: pull\n",
                          extra_engine="  wal_size: 2MiB\n")
        e.start()
        assert os.path.getsize(wal) == 2 << 20
        assert not os.path.exists(wal + ".new")
        assert any("the write-ahead file is now 2097152 bytes" in l for l in e.stderr_lines)
        assert e.read_all() == before
        st, _ = e.publish(mtlib.event("after", subject="s", type_="c.x"))
        assert st == 201
        assert e.stop() == 0
        e.start()  # and it stays so
        assert os.path.getsize(wal) == 2 << 20 and len(e.read_all()) == 21
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_emitted_events_carry_causation_and_reach_other_subscriptions():
    cfg = config("  emitter:\n    topics: [\"order.placed\"]\n    handler: tests/lua/handlers/emitter.lua\n"
                 "  counter:\n    topics: [\"order.confirmed\"]\n    handler: tests/lua/handlers/count.lua\n")
    with Engine(config=cfg) as e:
        e.publish(mtlib.event("p1", subject="order-7", type_="order.placed", data={"n": 1},
                              correlationid="corr-1"))
        wait_for(lambda: table(e, "counts").get("order-7") == 1, what="the confirmation to be counted")
        log = e.read_all()
        conf = [ev for ev in log if ev["type"] == "order.confirmed"]
        assert len(conf) == 1, log
        c = conf[0]
        assert c["causationid"] == "e-p1" and c["correlationid"] == "corr-1", c
        assert c["subject"] == "order-7" and c["source"] == "/moontide/subscriptions/emitter", c
        assert c["id"] == "emitter:1:0", c
        assert c["data"] == {"order": "order-7", "n": 1, "big": 9223372036854775807}, c
        st, _, raw = e.request("GET", "/events?after=1")
        assert b"9223372036854775807" in raw


def test_subscription_routes_and_check_command():
    cfg = config("  counter:\n    topics: [\"a.b\"]\n    handler: tests/lua/handlers/count.lua\n")
    with Engine(config=cfg) as e:
        st, _, body = e.request("GET", "/subscriptions")
        subs = json.loads(body)
        assert st == 200 and [s["name"] for s in subs] == ["counter"], subs
        assert e.request("GET", "/subscriptions/nope")[0] == 404
        assert e.request("GET", "/subscriptions/nope/dlq")[0] == 404
        assert e.request("POST", "/subscriptions/counter")[0] == 405
        assert e.request("GET", "/tables/counts/missing")[0] == 404
    rc, out, err = mtlib.run_cli("check", "-c", cfg)
    assert rc == 0, err
    bad = os.path.join(tempfile.mkdtemp(), "bad.lua")
    with open(bad, "w") as f:
        f.write("return function(e, ctx)\n  local x = = 1\nend\n")
    cfg2 = config("  broken:\n    topics: [\"a.b\"]\n    handler: %s\n" % bad)
    rc, out, err = mtlib.run_cli("check", "-c", cfg2)
    assert rc == 78 and bad + ":2:" in err, (rc, err)

    # Pull and webhook subscriptions have no handler to look at (check aborted).
    cfg3 = config("  p:\n    topics: [\"a.b\"]\n    deliver: pull\n"
                  "  w:\n    topics: [\"a.b\"]\n"
                  "    deliver: { webhook: { url: \"http://127.0.0.1:9/h\" } }\n")
    rc, out, err = mtlib.run_cli("check", "-c", cfg3)
    assert rc == 0 and out.strip() == cfg3 + ": ok", (rc, out, err)

    # A handler that does not compile is reported with the file's other errors,
    # at its handler line; one that compiles but does not load, as `run` would.
    d = tempfile.mkdtemp()
    notfn, loaderr = os.path.join(d, "notfn.lua"), os.path.join(d, "loaderr.lua")
    with open(notfn, "w") as f:
        f.write("return 42\n")
    with open(loaderr, "w") as f:
        f.write("error('boom at load')\n")
    cfg4 = config("  broken:\n    topics: [\"a..b\"]\n    handler: %s\n" % bad)
    rc, out, err = mtlib.run_cli("check", "-c", cfg4)
    lines = err.strip().split("\n")
    assert rc == 78 and len(lines) == 2, (rc, err)
    assert lines[0].startswith(cfg4 + ":6:14: error: 'subscriptions.broken.topics'"), lines
    assert lines[1] == cfg4 + ":7:14: error: 'subscriptions.broken.handler': " + bad + \
        ":2: unexpected symbol near '='", lines
    cfg5 = config("  n:\n    topics: [\"a.b\"]\n    handler: %s\n"
                  "  l:\n    topics: [\"a.b\"]\n    handler: %s\n" % (notfn, loaderr))
    rc, out, err = mtlib.run_cli("check", "-c", cfg5)
    assert rc == 78 and err.split("\n")[:2] == [
        cfg5 + ":7:14: error: 'subscriptions.n.handler': " + notfn + ": a handler must return "
        "a function or a table with a 'handle' function (got number)",
        cfg5 + ":10:14: error: 'subscriptions.l.handler': " + loaderr + ":1: boom at load"], err
    # One file, given once.
    rc, out, err = mtlib.run_cli("check", "-c", cfg5, cfg)
    assert rc == 64 and "one topology file" in err, (rc, err)


def test_a_long_blocked_lane_drains_in_order_after_its_head_succeeds():
    # More events wait behind the failed head than one dispatch job runs (512).
    cfg = config("  lane:\n    topics: [\"lane.#\"]\n    handler: tests/lua/handlers/fail_once.lua\n"
                 "    retry: { max_attempts: 3, backoff: 50ms, max_backoff: 50ms }\n")
    with Engine(config=cfg) as e:
        evs = [mtlib.event("h", subject="one", type_="lane.x", data={"fail": True})]
        evs += [mtlib.event("l%d" % i, subject="one", type_="lane.x", data={"i": i}) for i in range(1500)]
        evs += [mtlib.event("o%d" % i, subject="other", type_="lane.x", data={"i": i}) for i in range(10)]
        for b in range(0, len(evs), 500):
            st, body = e.publish_batch(evs[b:b + 500])
            assert st == 201, body
        counts = wait_for(lambda: (lambda t: t.get("one") == 1501 and t)(table(e, "counts")),
                          what="the blocked lane to drain")
        assert counts == {"one": 1501, "other": 10}, counts
        s = status(e, "lane")
        assert s["retrying"] == 0 and s["dlq"] == 0 and s["handled"] == 1511, s


def test_ecommerce_example_topology_runs_its_handlers():
    cfg = os.path.join(mtlib.SRCDIR, "config", "ecommerce.yaml")
    rc, out, err = mtlib.run_cli("check", "-c", cfg)
    assert rc == 0, err
    with Engine(config=cfg) as e:
        orders = [("order-1", "ann", 1250, "EUR"), ("order-2", "ann", 800, "USD"),
                  ("order-3", "bob", 4000, "EUR")]
        for subj, cust, cents, cur in orders:
            st, body = e.publish(mtlib.event(subj, subject=subj, type_="order.placed",
                                             data={"customer": cust, "total_cents": cents,
                                                   "currency": cur}))
            assert st == 201, body
        # A malformed order is rejected straight to the dead-letter queue.
        e.publish(mtlib.event("bad", subject="order-9", type_="order.placed", data={"total_cents": "x"}))
        totals = wait_for(lambda: (lambda t: len(t) == 2 and t)(table(e, "customer_totals")),
                          what="customer totals")
        assert totals == {"ann": {"orders": 2, "total_cents": 2050},
                          "bob": {"orders": 1, "total_cents": 4000}}, totals
        pays = wait_for(lambda: (lambda p: len(p) == 2 and p)(
            [ev for ev in e.read_all() if ev["type"] == "payment.requested"]), what="payments")
        assert sorted(p["subject"] for p in pays) == ["order-1", "order-3"], pays
        assert all(p["data"]["currency"] == "EUR" for p in pays), pays
        dlq = wait_for(lambda: (lambda b: len(json.loads(b)) == 1 and json.loads(b))(
            e.request("GET", "/subscriptions/customer-totals/dlq")[2]), what="the rejected order")
        assert dlq[0]["reason"].startswith("rejected: order.placed needs"), dlq


def test_a_handler_stuck_in_a_c_function_stops_the_engine_and_is_dead_lettered_after():
    # string.find with a backtracking pattern runs inside one C call: the
    # instruction budget never gets a say, and the writer would hang. The
    # watchdog stops the engine after limits.time; the restart dead-letters
    # that message without running it, and everything else flows.
    stuck_handler_case("")


def test_a_stuck_handler_with_workers_is_dealt_with_the_same_way():
    # The run that gets stuck may be a worker's or the writer's: either ends
    # the engine, and after the restart neither runs that event again.
    stuck_handler_case("    workers: 2\n")


def stuck_handler_case(extra):
    cfg = config("  poison:\n    topics: [\"job.run\"]\n    handler: tests/lua/handlers/poison.lua\n"
                 "    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 20ms }\n"
                 "    limits: { time: 1s }\n" + extra)
    e = Engine(config=cfg).start()
    try:
        for i in range(10):
            e.publish(mtlib.event("good%d" % i, subject="good%d" % (i % 4), type_="job.run",
                                  data={"kind": "ok", "amount": i}))
        wait_for(lambda: len(table(e, "ok")) == 10, what="the first good events")
        stuck = mtlib.event("bad-backtrack", subject="bad", type_="job.run",
                            data={"kind": "backtrack", "amount": 1})
        try:
            e.publish(stuck, conn=e.conn(timeout=60))
        except (OSError, ValueError):
            pass  # the handler may run in the append's own group: no answer then
        rc = e.proc.wait(60)
        e.kill()
        assert rc == 75, (rc, e.stderr_lines[-5:])
        err = [l for l in e.stderr_lines if "limits.time" in l]
        assert err and "'poison'" in err[0] and "exit status 75" in err[0], e.stderr_lines[-5:]
        note = os.path.join(e.data_dir, "stuck.json")
        with open(note) as f:
            noted = json.load(f)
        assert [(n["subscription"], n["source"], n["id"]) for n in noted] == \
            [("poison", "/test", stuck["id"])], noted

        e.start()
        assert not os.path.exists(note)
        assert any("got stuck" in l and "bad-backtrack" in l for l in e.stderr_lines), e.stderr_lines
        st, _ = e.publish(stuck)  # the publisher's retry, if it had no answer
        assert st in (200, 201), st
        for i in range(10, 20):
            e.publish(mtlib.event("good%d" % i, subject="good%d" % (i % 4), type_="job.run",
                                  data={"kind": "ok", "amount": i}))
        ok = wait_for(lambda: len(table(e, "ok")) == 20 and table(e, "ok"), what="all good events")
        assert sorted(ok.values()) == sorted(2 * i for i in range(20))
        dlq = wait_for(lambda: (lambda b: len(json.loads(b)) == 1 and json.loads(b))(
            e.request("GET", "/subscriptions/poison/dlq")[2]), what="one dead letter")
        assert dlq[0]["subject"] == "bad" and "limits.time (1000 ms)" in dlq[0]["reason"], dlq
        assert len(dlq[0]["errors"]) == 1, dlq  # not retried: it would get stuck again
        assert e.stop() == 0

        # A note that is not what the engine writes stops the start, naming the file.
        with open(note, "w") as f:
            json.dump(noted + [{"subscription": 1}], f)
        try:
            e.start(timeout=10)
            raise AssertionError("started with a malformed stuck.json")
        except mtlib.EngineError as x:
            assert "stuck.json" in str(x), x
        # So does one that is not a file (jansson's words were "'[' or '{' expected").
        os.unlink(note)
        os.mkdir(note)
        try:
            e.start(timeout=10)
            raise AssertionError("started with a directory for stuck.json")
        except mtlib.EngineError as x:
            assert "stuck.json is not a regular file; remove it to start" in str(x), x
    finally:
        e.cleanup()


def test_a_handler_file_stuck_loading_stops_the_engine_and_is_refused_once():
    cfg = config("  slow:\n    topics: [\"job.run\"]\n    handler: tests/lua/handlers/stuck_load.lua\n"
                 "    limits: { time: 1s }\n")
    d = tempfile.mkdtemp(prefix="moontide-it-")
    try:
        def run():
            p = subprocess.run([mtlib.MOONTIDE, "run", "-c", cfg, "--data-dir", d,
                                "--listen", "127.0.0.1:0"], cwd=mtlib.SRCDIR,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            return p.returncode, p.stderr.decode()
        rc, err = run()
        assert rc == 75 and "loading the handler of subscription 'slow'" in err, (rc, err)
        assert os.path.exists(os.path.join(d, "stuck.json"))
        rc, err = run()  # refused once, with the reason, instead of hanging again
        assert rc == 78 and "stuck_load.lua took longer than limits.time (1000 ms)" in err, (rc, err)
        assert not os.path.exists(os.path.join(d, "stuck.json"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_run_logs_at_most_a_thousand_lines_each_cut_to_16_kib():
    chatty_case("")


def test_a_run_on_a_worker_logs_within_the_same_limits():
    chatty_case("    workers: 2\n")


def chatty_case(extra):
    cfg = config("  chatty:\n    topics: [\"talk\"]\n    handler: tests/lua/handlers/chatty.lua\n" + extra)
    with Engine(config=cfg) as e:
        for kind in ("loop", "print", "long"):
            e.publish(mtlib.event("t-" + kind, subject=kind, type_="talk", data={"kind": kind}))
        wait_for(lambda: len(table(e, "chatty")) == 3, what="the three runs")
        msgs = []
        for line in list(e.stderr_lines):
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("subscription") == "chatty" and "sequence" in o:
                msgs.append(o["msg"])
        # Exactly the arguments, space-separated (print: tab-separated), nothing after.
        assert [m for m in msgs if m.startswith("line ")] == ["line %d" % i for i in range(1, 1001)]
        assert [m for m in msgs if m.startswith("p\t")] == ["p\t%d" % i for i in range(1, 1001)]
        dropped = [m for m in msgs if "the rest of its lines are dropped" in m]
        assert len(dropped) == 2, dropped
        long = [m for m in msgs if m.startswith("\u00e9")]
        assert len(long) == 1, len(long)
        head, _, tail = long[0].partition(" ... ")
        assert head == "\u00e9" * 8192 and tail == "(23616 more bytes cut)", tail


mtlib.main(globals())

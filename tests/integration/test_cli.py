"""The command line against the real daemon: help and exit codes, check,
publish (flags, file, stdin), read, tail, and run's refusals."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import mtlib
from mtlib import Engine, run_cli


def test_help_and_version_exit_zero():
    rc, out, _ = run_cli("--help")
    assert rc == 0 and "usage: moontide" in out, out
    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.startswith("moontide "), out
    for cmd in ("run", "check", "publish", "read", "tail"):
        rc, out, err = run_cli(cmd, "--help")
        assert rc == 0, (cmd, rc, err)
        assert "usage: moontide " + cmd in out, (cmd, out)


def test_usage_errors_exit_64():
    assert run_cli()[0] == 64
    rc, _, err = run_cli("frobnicate")
    assert rc == 64 and "unknown command 'frobnicate'" in err, err
    assert run_cli("run", "--no-such-flag")[0] == 64
    assert run_cli("publish", "--type", "a.b")[0] == 64  # --source missing
    assert run_cli("read", "--from", "3")[0] == 64       # --from needs --stream
    rc, _, err = run_cli("read", "--limit", "0")       # once the usage without a reason
    assert rc == 64 and "--limit must be 1 or more" in err, (rc, err)
    rc, _, err = run_cli("run", "--data-dir", "")      # once a silent exit 74
    assert rc == 64 and "--data-dir must not be empty" in err, (rc, err)


def test_check_reports_every_error_with_position():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "bad.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nengine:\n  map_size: lots\n  durability: maybe\n  colour: blue\n")
    rc, out, err = run_cli("check", "-c", path)
    assert rc == 78, (rc, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 3, err
    assert lines[0].startswith(path + ":3:13: error:") and "map_size" in lines[0], lines[0]
    assert lines[1].startswith(path + ":4:15: error:") and "durability" in lines[1], lines[1]
    assert lines[2].startswith(path + ":5:3: error:") and "colour" in lines[2], lines[2]
    rc, out, _ = run_cli("check", "-c", os.path.join(mtlib.SRCDIR, "config", "default.yaml"))
    assert rc == 0 and out.endswith(": ok\n"), out


def test_check_loads_one_handler_file_under_the_limits_given():
    d = tempfile.mkdtemp()
    files = {"ok.lua": "local n = 0\nfor i = 1, 20000 do n = n + i end\nreturn function() end\n",
             "syntax.lua": "return function(\n",
             "number.lua": "return 5\n",
             "hog.lua": "local t = {}\nfor i = 1, 1e6 do t[i] = ('x'):rep(40) .. i end\n"
                        "return function() end\n",
             # One C function call, stuck: no instruction budget ends it, --time does.
             "stuck.lua": "print('loading')\n"
                          "local _ = ('a'):rep(3000):find(('a*'):rep(12) .. 'b')\n"
                          "return function() end\n"}
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    path = {name: os.path.join(d, name) for name in files}
    rc, out, _ = run_cli("check", "--handler", path["ok.lua"])
    assert rc == 0 and out == path["ok.lua"] + ": ok\n", out
    rc, _, err = run_cli("check", "--handler", path["ok.lua"], "--instructions", "1000")
    assert rc == 78 and err == "%s:2: instruction budget of 1000 exceeded while loading %s\n" % (
        path["ok.lua"], path["ok.lua"]), err
    rc, _, err = run_cli("check", "--handler", path["syntax.lua"])
    assert rc == 78 and err.startswith(path["syntax.lua"] + ":2:"), err
    rc, _, err = run_cli("check", "--handler", path["number.lua"])
    assert rc == 78 and "must return a function" in err, err
    rc, _, err = run_cli("check", "--handler", path["hog.lua"], "--memory", "1MiB")
    assert rc == 78 and err.startswith(path["hog.lua"] + ":2: memory limit of 1048576 bytes"), err
    # Only the reason it failed is written: not what its top level prints.
    rc, _, err = run_cli("check", "--handler", path["stuck.lua"], "--time", "300ms")
    assert rc == 78 and err == ("%s: its top-level code ran past its time limit (300 ms) and was "
                                "stopped: a string function stuck backtracking?\n"
                                % path["stuck.lua"]), err
    rc, out, err = run_cli("check", "--handler", path["ok.lua"], "--time", "1h")
    assert rc == 0 and out == path["ok.lua"] + ": ok\n" and err == "", (out, err)
    rc, _, err = run_cli("check", "--handler", os.path.join(d, "missing.lua"))
    assert rc == 78 and "missing.lua" in err, err
    for args in (["--memory", "1MiB"], ["--handler", path["ok.lua"], "-c", path["ok.lua"]],
                 ["--handler", path["ok.lua"], "--instructions", "5"],
                 ["--handler", path["ok.lua"], "--memory", "lots"],
                 ["--handler", path["ok.lua"], "--time", "0s"],
                 ["--handler", path["ok.lua"], "--time", "2h"], ["--time", "1s"]):
        rc, _, err = run_cli("check", *args)
        assert rc == 64 and "moontide check:" in err, (args, rc, err)
    shutil.rmtree(d)


def test_run_refuses_bad_configuration_with_78():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "bad.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nengine:\n  listen: nowhere\n")
    rc, _, err = run_cli("run", "-c", path, "--data-dir", d, timeout=30)
    assert rc == 78 and path + ":3:11: error:" in err, (rc, err)


def test_check_refuses_the_filters_run_refuses_and_run_takes_what_check_passes():
    """A NUL can never match an attribute nor name a dialect: check says so.
    In a data string it can, and run starts with the filter check passed."""
    d = tempfile.mkdtemp()
    handler = os.path.join(d, "h.lua")
    with open(handler, "w") as f:
        f.write("return function(event, ctx) end\n")
    head = ("version: 1\nsubscriptions:\n  s:\n    topics: [a]\n    handler: %s\n" % handler)
    for body, where, why in [
        ('    filter: { "exact\\0junk": { subject: a } }\n', ":6:15: error:",
         "'subscriptions.s.filter': a dialect name cannot hold a NUL byte"),
        ('    filter: { exact: { subject: "a\\0b" } }\n', ":6:33: error:",
         "'subscriptions.s.filter': exact.subject: holds a NUL byte"),
    ]:
        path = os.path.join(d, "bad.yaml")
        with open(path, "w") as f:
            f.write(head + body)
        rc, out, err = run_cli("check", "-c", path)
        assert rc == 78 and err.startswith(path + where) and why in err, (body, rc, err)
        rc, _, err = run_cli("run", "-c", path, "--data-dir", d, timeout=30)
        assert rc == 78 and err.startswith(path + where), (body, rc, err)
    path = os.path.join(d, "ok.yaml")
    with open(path, "w") as f:
        f.write(head + '    filter: { exact: { "data.x": "a\\0b" } }\n')
    rc, out, err = run_cli("check", "-c", path)
    assert rc == 0, (rc, err)
    with Engine(config=path) as e:
        e.publish(mtlib.event("n", type_="a", data={"x": "a\0b"}))
        assert e.proc.poll() is None


def test_publish_read_and_stream_through_the_cli():
    with Engine() as e:
        env = {"MOONTIDE_URL": e.url()}
        rc, out, err = run_cli("publish", "--type", "order.placed", "--source", "/shop",
                               "--id", "o-1", "--subject", "order-1",
                               "--data", '{"total": 9223372036854775807, "f": 1.10}', env=env)
        assert rc == 0, err
        ans = json.loads(out.splitlines()[0])
        assert ans["sequence"] == "1" and ans["streamversion"] == 0, ans
        # The data went over byte for byte.
        st, _, body = e.request("GET", "/events?after=0")
        assert b'"data":{"total": 9223372036854775807, "f": 1.10}' in body, body

        # Expected version conflict: exit 65 and the engine's reason on stderr.
        rc, _, err = run_cli("publish", "--type", "order.paid", "--source", "/shop",
                             "--subject", "order-1", "--expected-version", "5", env=env)
        assert rc == 65 and "409" in err, (rc, err)

        # JSON lines on stdin, one event each.
        lines = "".join(json.dumps(mtlib.event(i, subject="order-2")) + "\n" for i in range(5))
        rc, out, err = run_cli("publish", "-", input=lines.encode(), env=env)
        assert rc == 0, err
        assert len(out.splitlines()) == 5, out

        # A file holding a batch.
        d = tempfile.mkdtemp()
        path = os.path.join(d, "batch.json")
        with open(path, "w") as f:
            json.dump([mtlib.event("b%d" % i, subject="order-3") for i in range(3)], f)
        rc, out, err = run_cli("publish", "--file", path, env=env)
        assert rc == 0 and len(out.splitlines()) == 3, (out, err)

        rc, out, err = run_cli("read", env=env)
        assert rc == 0, err
        evs = [json.loads(l) for l in out.splitlines()]
        assert [ev["sequence"] for ev in evs] == [str(i) for i in range(1, 10)], evs

        rc, out, err = run_cli("read", "--stream", "order-2", "--from", "2", env=env)
        assert rc == 0, err
        assert [json.loads(l)["streamversion"] for l in out.splitlines()] == [2, 3, 4], out

        rc, out, err = run_cli("read", "--stream", "no-such-stream", env=env)
        assert rc == 65 and "not found" in err, (rc, err)


def test_publish_rejects_malformed_input_with_65():
    with Engine() as e:
        env = {"MOONTIDE_URL": e.url()}
        rc, _, err = run_cli("publish", "--type", "a.b", "--source", "/s", "--data", "{oops",
                             env=env)
        assert rc == 65, (rc, err)
        good = json.dumps(mtlib.event("ok", subject="s")) + "\n"
        rc, out, err = run_cli("publish", "-", input=(good + "{not json\n").encode(), env=env)
        assert rc == 65 and "stdin:2" in err, (rc, err)
        assert len(e.read_all()) == 1  # the line before the bad one stays published
        # One event of 2.2 MB, over twice the default max_body: the engine's
        # 413, not "cannot reach engine: Broken pipe" (exit 69).
        big = json.dumps(mtlib.event("big", subject="s", data={"pad": "x" * 2200000})) + "\n"
        rc, out, err = run_cli("publish", "-", input=big.encode(), env=env)
        assert rc == 65 and "413" in err, (rc, err)
        assert len(e.read_all()) == 1


def test_cli_against_no_engine_exits_69():
    env = {"MOONTIDE_URL": "http://127.0.0.1:1"}
    rc, _, err = run_cli("publish", "--type", "a.b", "--source", "/s", env=env)
    assert rc == 69 and "cannot reach engine" in err, (rc, err)
    assert run_cli("read", env=env)[0] == 69


def test_tail_follows_new_events_until_interrupted():
    with Engine() as e:
        e.publish(mtlib.event("old"))
        p = subprocess.Popen([mtlib.MOONTIDE, "tail", "--url", e.url()], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # let tail learn the head before publishing
            for i in range(3):
                st, _ = e.publish(mtlib.event("new%d" % i))
                assert st == 201
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 3 and time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                got.append(json.loads(line))
            assert [g["id"] for g in got] == ["e-new0", "e-new1", "e-new2"], got
        finally:
            p.send_signal(signal.SIGINT)
            rc = p.wait(20)
        assert rc == 0, (rc, p.stderr.read())


mtlib.main(globals())

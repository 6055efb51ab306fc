"""Helpers for moontide's integration tests: start the real daemon on a
loopback port with a temporary data directory, talk HTTP to it, stop it
(SIGTERM) or kill it (SIGKILL), and report results as TAP.

Every test module ends with `mtlib.main(globals())`, which runs its
`test_*` functions in order and prints one TAP line per test.
"""
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
import traceback

MOONTIDE = os.environ.get("MOONTIDE") or os.path.join(
    os.path.dirname(__file__), "..", "..", "moontide")
SRCDIR = os.environ.get("MT_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")


class EngineError(Exception):
    pass


class Skip(Exception):
    """Raised by a test that cannot run here; reported as a TAP skip with the reason."""


class Engine:
    """One `moontide run` process on 127.0.0.1 with its own data directory."""

    def __init__(self, data_dir=None, config=None, args=(), env=None, preexec_fn=None,
                 cwd=None, prefix=()):
        self.own_dir = data_dir is None
        self.cwd = cwd or SRCDIR  # where relative handler paths resolve
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="moontide-it-")
        self.config = config
        self.args = list(args)
        self.env = env
        self.preexec_fn = preexec_fn  # runs in the engine's process before it starts
        self.prefix = list(prefix)  # what the engine is started through (a loader)
        self.proc = None
        self.port = None
        self.stderr_lines = []
        self._reader = None

    def start(self, timeout=30):
        self.port = None  # a restart learns its new port
        self.stderr_lines = []
        cmd = self.prefix + [MOONTIDE, "run", "--data-dir", self.data_dir, "--listen",
                             "127.0.0.1:0"]
        if self.config:
            cmd += ["-c", self.config]
        cmd += self.args
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, cwd=self.cwd,
                                     preexec_fn=self.preexec_fn)
        ready = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stderr_lines.append(line)
                if self.port is None:
                    try:
                        obj = json.loads(line)
                        if "port" in obj:
                            self.port = int(obj["port"])
                            ready.set()
                    except ValueError:
                        pass
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or self.port is None:
            self.kill()
            raise EngineError("engine did not start:\n" + "\n".join(self.stderr_lines))
        return self

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None):
        """Returns (status, headers dict lower-cased, body bytes)."""
        c = conn or self.conn()
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            elif isinstance(body, str):
                body = body.encode()
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            if conn is None:
                c.close()

    def publish(self, event, expected=None, conn=None):
        """Structured-mode publish of one event; returns (status, json)."""
        h = {"Content-Type": "application/cloudevents+json"}
        if expected is not None:
            h["moontide-expected-version"] = str(expected)
        st, _, body = self.request("POST", "/events", event, h, conn)
        return st, json.loads(body)

    def publish_batch(self, events, expected=None, conn=None):
        h = {"Content-Type": "application/cloudevents-batch+json"}
        if expected is not None:
            h["moontide-expected-version"] = str(expected)
        st, _, body = self.request("POST", "/events", events, h, conn)
        return st, json.loads(body)

    def read_all(self, after=0, limit=10000):
        out = []
        while True:
            st, _, body = self.request("GET", "/events?after=%d&limit=%d" % (after, limit))
            if st != 200:
                raise EngineError("read failed: %d %s" % (st, body[:200]))
            page = json.loads(body)
            if not page:
                return out
            out += page
            after = int(page[-1]["sequence"])

    def stop(self, timeout=60):
        """SIGTERM; returns the exit code (expects a clean drain)."""
        if not self.proc:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(5)
        self.proc = None
        return rc

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            if self._reader:
                self._reader.join(5)
            self.proc = None

    def cleanup(self):
        self.kill()
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        rc = self.stop() if self.proc else 0
        self.cleanup()
        if exc[0] is None and rc != 0:
            raise EngineError("engine exited %s on SIGTERM:\n%s" % (rc, "\n".join(self.stderr_lines[-40:])))
        return False


def event(i, subject=None, source="/test", type_="test.happened", data=None, **extra):
    e = {"specversion": "1.0", "id": "e-%s" % i, "source": source, "type": type_}
    if subject is not None:
        e["subject"] = subject
    if data is not None:
        e["data"] = data
    e.update(extra)
    return e


def children(pid):
    """The processes whose parent is pid, zombies too, as (pid, cmdline) pairs."""
    kids = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % p) as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmdline = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if int(stat[1]) == pid:
            kids.append((int(p), cmdline))
    return kids


def alive(pid):
    """Whether process pid runs (a zombie does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(pred, timeout=30, what="condition"):
    """Polls pred() until it returns something true (returned), or fails after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def topology(body):
    """Writes a topology file (version 1 plus 'body') to a fresh directory; returns its path."""
    d = tempfile.mkdtemp(prefix="moontide-cfg-")
    path = os.path.join(d, "topology.yaml")
    with open(path, "w") as f:
        f.write("version: 1\n" + body)
    return path


def abandon_waits(e, requests, stored=None):
    """Sends each raw HTTP request (bytes) on a connection of its own, waits
    until the engine holds them (and 'stored()' is true, if given), closes
    the connections and waits until the engine has given their descriptors
    back: a wait whose client went must not hold one until it ends."""
    import socket
    fds = lambda: len(os.listdir("/proc/%d/fd" % e.proc.pid))
    base = fds()
    socks = []
    for raw in requests:
        s = socket.create_connection(("127.0.0.1", e.port))
        s.sendall(raw)
        socks.append(s)
    wait_for(lambda: fds() >= base + len(requests) * 3 // 4, what="the requests waiting")
    if stored:
        wait_for(stored, what="the requests stored")
    for s in socks:
        s.close()
    wait_for(lambda: fds() <= base + 1, timeout=30, what="the descriptors back")


def run_cli(*args, input=None, env=None, timeout=60):
    """Runs `moontide ARGS`; returns (exit code, stdout, stderr) as text."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([MOONTIDE] + list(args), input=input, capture_output=True, env=e,
                       timeout=timeout, cwd=SRCDIR)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def main(namespace):
    """Runs every test_* function of a module as one TAP test each."""
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    print("1..%d" % len(tests), flush=True)
    failed = 0
    for i, (name, fn) in enumerate(tests, 1):
        t0 = time.monotonic()
        try:
            fn()
            print("ok %d - %s (%.1fs)" % (i, name, time.monotonic() - t0), flush=True)
        except Skip as why:
            print("ok %d - %s # SKIP %s" % (i, name, why), flush=True)
        except Exception:
            failed += 1
            print("not ok %d - %s" % (i, name), flush=True)
            for line in traceback.format_exc().splitlines():
                print("# " + line, flush=True)
    sys.exit(1 if failed else 0)

"""A full disk, for real: the data directory lives on a small tmpfs that
the engine fills. Publishes then get 507 with a clear error and the log
names the file system; reads go on; nothing acknowledged is lost or
changed; once room is made, publishing resumes, and a restart finds every
acknowledged event once, in order.

Needs root (it mounts the tmpfs); run as another user it is skipped.
Timing is never asserted."""
import json
import os
import shutil
import subprocess
import tempfile
import time

import mtlib
from mtlib import Engine, event


def _mount_small_fs(size):
    mnt = tempfile.mkdtemp(prefix="moontide-it-disk-")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", mnt],
                       capture_output=True, text=True)
    if p.returncode != 0:
        os.rmdir(mnt)
        raise AssertionError("cannot mount a tmpfs for the test: " + p.stderr.strip())
    return mnt


def _unmount(mnt):
    subprocess.run(["umount", mnt], check=False)
    shutil.rmtree(mnt, ignore_errors=True)


def _batch(k, n=20, pad=4000):
    return [event("disk-%d-%d" % (k, i), subject="s-%d" % ((k * n + i) % 7),
                  data={"k": k, "i": i, "pad": chr(ord("a") + (k + i) % 26) * pad})
            for i in range(n)]


def _check(evs, acked):
    """Every acknowledged event is there once, intact, in acknowledgement order."""
    assert [x["id"] for x in evs] == [a["id"] for a, _ in acked], \
        "the log is not exactly the acknowledged events"
    for (ans, sent), got in zip(acked, evs):
        assert got["sequence"] == ans["sequence"], (got["id"], got["sequence"], ans["sequence"])
        assert got.get("streamversion") == ans["streamversion"], got["id"]
        assert got["data"] == sent["data"] and got["subject"] == sent["subject"], got["id"]
    seqs = [int(x["sequence"]) for x in evs]
    assert seqs == list(range(1, len(evs) + 1)), "sequences are not contiguous from 1"


def test_a_full_disk_answers_507_and_loses_nothing():
    if os.geteuid() != 0:
        raise mtlib.Skip("mounting a tmpfs needs root")
    mnt = _mount_small_fs("24m")
    try:
        cfg = os.path.join(mnt, "engine.yaml")
        with open(cfg, "w") as f:
            f.write("version: 1\nengine:\n  map_size: 1GiB\n  wal_size: 4MiB\n")
        ballast = os.path.join(mnt, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (4 << 20))
        d = os.path.join(mnt, "data")
        e = Engine(data_dir=d, config=cfg).start()
        acked = []   # (answer for the event, the event sent)
        refused = None
        try:
            for k in range(2000):
                b = _batch(k)
                st, ans = e.publish_batch(b)
                if st == 507:
                    refused = b
                    assert set(ans) == {"error", "detail"}, ans
                    assert ans["error"] == "store full", ans
                    assert "file system is full" in ans["detail"], ans
                    break
                assert st == 201, (k, st, ans)
                acked += list(zip(ans["events"], b))
            assert refused is not None, "a 24 MiB file system never filled up"
            assert acked, "the disk was full before the first batch"
            # The log line may reach the engine's stderr after the answer.
            mtlib.wait_for(lambda: any("no space left" in l and d in l for l in e.stderr_lines),
                           timeout=10, what="a log line naming the full file system")

            # Still serving: reads see exactly what was acknowledged, more
            # publishes get 507 again and take nothing.
            _check(e.read_all(limit=500), acked)
            t0 = time.monotonic()
            for _ in range(20):
                st, ans = e.publish_batch(refused)
                assert st == 507, (st, ans)
                st, _, raw = e.request("GET", "/healthz")
                assert st == 200 and json.loads(raw)["status"] == "ok", (st, raw)
            _check(e.read_all(limit=500), acked)
            # Each refused write is not a line of its own: one a second at most.
            lines = sum("no space left" in l for l in e.stderr_lines)
            assert lines <= 2 + int(time.monotonic() - t0), (lines, e.stderr_lines[-5:])

            # Room again: the refused batch now goes in, with the next sequences.
            os.unlink(ballast)
            st, ans = e.publish_batch(refused)
            assert st == 201, (st, ans)
            acked += list(zip(ans["events"], refused))
            _check(e.read_all(limit=500), acked)
        finally:
            rc = e.stop()
        assert rc == 0, (rc, e.stderr_lines[-20:])

        # A restart finds all of it, and the log goes on from there.
        e = Engine(data_dir=d, config=cfg).start()
        try:
            _check(e.read_all(limit=500), acked)
            st, ans = e.publish(event("after-restart"))
            assert st == 201 and int(ans["events"][0]["sequence"]) == len(acked) + 1, (st, ans)
        finally:
            rc = e.stop()
        assert rc == 0, (rc, e.stderr_lines[-20:])
    finally:
        _unmount(mnt)


if __name__ == "__main__":
    mtlib.main(globals())

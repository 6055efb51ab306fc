"""A power cut between checkpoints, simulated on the files: LMDB's newest
meta page reached the disk but the data pages it points to did not. The
engine must start from the last checkpoint (whose meta pages it saved in the
write-ahead file) and re-apply every acknowledged group since."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import mtlib
from mtlib import Engine

PAGE = os.sysconf("SC_PAGESIZE")


def read_ids(e):
    return [(ev["id"], ev["sequence"], ev.get("streamversion")) for ev in e.read_all()]


def test_meta_page_ahead_of_its_data_is_recovered_from_the_checkpoint():
    e = Engine().start()
    try:
        for i in range(50):
            st, _ = e.publish(mtlib.event("a%d" % i, subject="s%d" % (i % 5), data={"i": i}))
            assert st == 201
        assert e.stop() == 0  # clean stop: a checkpoint
        data = os.path.join(e.data_dir, "data.mdb")
        checkpoint_copy = data + ".checkpoint"
        shutil.copyfile(data, checkpoint_copy)

        # No checkpoint may be recorded from here on (one starts every second
        # while there are commits): it is held before its sync, and never let go.
        hold = tempfile.mkdtemp(prefix="moontide-it-hold-")
        e.env = {"MOONTIDE_TEST_CHECKPOINT_HOLD": hold}
        e.start()
        acked = []
        for i in range(200):
            st, body = e.publish_batch([mtlib.event("b%d-%d" % (i, k), subject="s%d" % (k % 7),
                                                    data={"i": i, "k": k}) for k in range(3)])
            assert st == 201, body
            acked += [(x["id"], x["sequence"], x.get("streamversion")) for x in body["events"]]
        before = read_ids(e)
        e.kill()  # no checkpoint since the start: all of it lives in the write-ahead file
        assert not os.path.exists(os.path.join(hold, "1-synced")), "a checkpoint got past its hold"
        shutil.rmtree(hold, ignore_errors=True)
        e.env = None

        # The disk as a power cut could leave it: the newest meta pages, the old data pages.
        with open(data, "rb") as f:
            newest_meta = f.read(2 * PAGE)
        shutil.copyfile(checkpoint_copy, data)
        with open(data, "r+b") as f:
            f.write(newest_meta)
            f.flush()
            os.fsync(f.fileno())

        e.start()
        after = read_ids(e)
        assert after == before, "log differs after recovery: %d vs %d events" % (len(after), len(before))
        got = {i: (s, v) for i, s, v in after}
        for i, s, v in acked:
            assert got.get(i) == (s, v), (i, got.get(i), (s, v))
        seqs = [int(s) for _, s, _ in after]
        assert seqs == list(range(1, len(seqs) + 1))
        # And the engine keeps appending after it.
        st, body = e.publish(mtlib.event("c0", subject="s0"))
        assert st == 201 and body["events"][0]["sequence"] == str(len(seqs) + 1), body
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_killed_while_replaying_the_write_ahead_file_it_still_recovers():
    """A start after a crash replays the groups after the last checkpoint,
    each in a transaction of its own, and only then makes a checkpoint. A
    second crash in the middle of that replay once left the directory
    unable to start for good: the replayed groups had reused pages of the
    checkpoint's tree, to which the next start rolls back. Recovery is held
    (MOONTIDE_TEST_REPLAY_HOLD) half way through and killed there; the start
    after it must bring back every acknowledged event."""
    hold = tempfile.mkdtemp(prefix="moontide-it-hold-")
    e = Engine(env={"MOONTIDE_TEST_CHECKPOINT_HOLD": hold})  # no checkpoint after the start
    try:
        e.start()
        pad = "p" * 2000
        for i in range(300):
            st, _ = e.publish_batch([mtlib.event("r%d-%d" % (i, k), subject="s%d" % (k % 7),
                                                 data={"pad": pad}) for k in range(5)])
            assert st == 201
        before = read_ids(e)
        assert len(before) == 1500
        e.kill()
        assert not os.path.exists(os.path.join(hold, "1-synced")), "a checkpoint got past its hold"
        shutil.rmtree(hold, ignore_errors=True)

        # Recovery, held after 150 of the groups, and killed there.
        mark = os.path.join(tempfile.mkdtemp(prefix="moontide-it-replay-"), "held")
        env = dict(os.environ, MOONTIDE_TEST_REPLAY_HOLD=mark + ":150")
        p = subprocess.Popen([mtlib.MOONTIDE, "run", "--data-dir", e.data_dir, "--listen",
                              "127.0.0.1:0"], env=env, cwd=mtlib.SRCDIR,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            mtlib.wait_for(lambda: os.path.exists(mark) or p.poll() is not None,
                           what="recovery to reach its hold")
            assert p.poll() is None, "exited %d before the hold" % p.returncode
        finally:
            p.kill()
            p.wait()

        e.env = None
        e.start()
        assert read_ids(e) == before
        st, body = e.publish(mtlib.event("after", subject="s0"))
        assert st == 201 and body["events"][0]["sequence"] == "1501", body
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_a_truncated_data_file_is_refused_with_a_clear_error():
    """No power cut leaves LMDB's file shorter than its meta page says (a
    checkpoint syncs the pages before it is recorded), but a damaged disk or
    a data directory copied while the engine ran can: the engine must say
    so and exit, not die reading pages that are not there. With the file
    whole again, it starts and has every event."""
    e = Engine()
    try:
        e.start()
        for i in range(20):
            st, _ = e.publish_batch([mtlib.event("t%d-%d" % (i, k), subject="s%d" % k,
                                                 data={"pad": "x" * 500}) for k in range(50)])
            assert st == 201
        before = read_ids(e)
        assert e.stop() == 0
        data = os.path.join(e.data_dir, "data.mdb")
        whole = data + ".whole"
        shutil.copyfile(data, whole)
        size = os.path.getsize(data)
        with open(data, "r+b") as f:
            f.truncate(size // 2 // PAGE * PAGE)
        p = subprocess.run([mtlib.MOONTIDE, "run", "--data-dir", e.data_dir, "--listen",
                            "127.0.0.1:0"], capture_output=True, text=True, timeout=60,
                           cwd=mtlib.SRCDIR)
        assert p.returncode > 0, "exit %d (a signal if negative):\n%s" % (p.returncode,
                                                                          p.stderr[-2000:])
        assert "the data directory is damaged" in p.stderr and "data.mdb" in p.stderr, \
            p.stderr[-2000:]

        # Shorter than LMDB's two meta pages: refused too, and left as it was
        # (the checkpoint's meta pages were written over it first).
        for size in (0, 100, PAGE):
            with open(whole, "rb") as f:
                head = f.read(size)
            with open(data, "wb") as f:
                f.write(head)
            p = subprocess.run([mtlib.MOONTIDE, "run", "--data-dir", e.data_dir, "--listen",
                                "127.0.0.1:0"], capture_output=True, text=True, timeout=60,
                               cwd=mtlib.SRCDIR)
            assert p.returncode == 74, (size, p.returncode, p.stderr[-2000:])
            assert "the data directory is damaged" in p.stderr, p.stderr[-2000:]
            with open(data, "rb") as f:
                assert f.read() == head, "data.mdb of %d bytes was written to" % size

        shutil.copyfile(whole, data)
        e.start()
        assert read_ids(e) == before
        assert e.stop() == 0
    finally:
        e.cleanup()


def test_power_cut_while_a_checkpoint_is_being_made():
    """Checkpoints run on a thread of their own while the writer goes on.
    The first one after a start is held (MOONTIDE_TEST_CHECKPOINT_HOLD, see
    src/mt_store.h) at each of its stages in turn; meanwhile LMDB's file is
    copied (its pages as the disk may hold them: the last finished
    checkpoint's tree, later pages in any state) and more events are
    acknowledged. After a kill -9, the disk is made to look as a power cut
    could leave it: that copy, with the newest meta pages over it. Recovery
    must bring back every acknowledged event."""
    for stage in ("syncing", "synced", "recorded"):
        hold = tempfile.mkdtemp(prefix="moontide-it-hold-")
        e = Engine(env={"MOONTIDE_TEST_CHECKPOINT_HOLD": hold})
        try:
            e.start()
            data = os.path.join(e.data_dir, "data.mdb")
            acked = []
            conn = e.conn()
            i = 0

            def publish_some(n):
                nonlocal i
                for _ in range(n):
                    st, body = e.publish(mtlib.event("p%d" % i, subject="s%d" % (i % 11),
                                                     data={"i": i, "pad": "x" * (i % 200)}),
                                         conn=conn)
                    assert st == 201, (st, body)
                    ev = body["events"][0]
                    acked.append((ev["id"], ev["sequence"], ev.get("streamversion")))
                    i += 1

            # The load triggers checkpoint 1; let it pass the stages before this one.
            end = time.monotonic() + 120
            for name in ("syncing", "synced", "recorded"):
                marker = os.path.join(hold, "1-" + name)
                while not os.path.exists(marker):
                    assert time.monotonic() < end, "%s: no checkpoint reached %s" % (stage, name)
                    publish_some(20)
                if name == stage:
                    break
                os.unlink(marker)
            publish_some(50)
            shutil.copyfile(data, data + ".cut")
            publish_some(100)
            assert os.path.exists(marker)
            conn.close()
            e.kill()

            with open(data, "rb") as f:
                newest_meta = f.read(2 * PAGE)
            shutil.copyfile(data + ".cut", data)
            os.unlink(data + ".cut")
            with open(data, "r+b") as f:
                f.write(newest_meta)
                f.flush()
                os.fsync(f.fileno())

            e.env = None
            e.start()
            after = read_ids(e)
            got = {x: (s, v) for x, s, v in after}
            lost = [a for a in acked if got.get(a[0]) != (a[1], a[2])]
            assert not lost, "%s: %d acknowledged event(s) lost or moved: %r" % (
                stage, len(lost), lost[:5])
            seqs = [int(s) for _, s, _ in after]
            assert seqs == list(range(1, len(seqs) + 1)), stage
            assert len(after) == len(acked), (stage, len(after), len(acked))
            assert e.stop() == 0
        finally:
            e.cleanup()
            shutil.rmtree(hold, ignore_errors=True)


mtlib.main(globals())

"""A power cut between checkpoints, simulated on the files: LMDB's newest
meta page reached the disk but the data pages it points to did not. The
engine must start from the last checkpoint (whose meta pages it saved in the
write-ahead file) and re-apply every acknowledged group since."""
import os
import shutil
import signal

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

        e.start()
        acked = []
        for i in range(200):
            st, body = e.publish_batch([mtlib.event("b%d-%d" % (i, k), subject="s%d" % (k % 7),
                                                    data={"i": i, "k": k}) for k in range(3)])
            assert st == 201, body
            acked += [(x["id"], x["sequence"], x.get("streamversion")) for x in body["events"]]
        before = read_ids(e)
        e.kill()  # no checkpoint since the start: all of it lives in the write-ahead file

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


mtlib.main(globals())

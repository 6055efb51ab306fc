/*
 * mt_wal.h - the write-ahead file: the one sync point of a group commit.
 *
 * A pre-allocated, zero-filled file of fixed size, used as a ring. Each
 * group commit appends one checksummed record (the group's redo operations)
 * and syncs the file once with fdatasync; since the file never grows, that
 * sync writes data blocks only, no file-system metadata.
 *
 * The ring: records are written one after another from the front; a record
 * that does not fit before the end of the file goes to the front instead,
 * and the pass over the file ("lap") it starts has the next generation
 * number, which every record carries. A checkpoint records, in the header,
 * the position (lap and offset) from which a replay must start: the store
 * has made everything before it durable on its own. Only then may the space
 * before that position be written again, so appends can go on while a
 * checkpoint is being made; the file is full only when the head would
 * overrun the last checkpoint's position.
 *
 * Layout: two 32 KiB header slots, then records. A slot holds the magic,
 * a header sequence number, the file size, the checkpoint snapshot (opaque
 * bytes the store saves with each checkpoint: LMDB's meta pages) with a
 * CRC-32 over those, then the checkpoint's position with a CRC-32 of its
 * own. A new header goes to slot seq % 2, so a torn header write leaves the
 * previous one readable; the newer valid slot wins. (A slot of the previous
 * format, without a position, means lap = its sequence number, offset = the
 * first record.) A record is magic, generation, group id, payload length,
 * CRC-32 of these and the payload, then the payload padded to 8 bytes. A
 * replay reads from the checkpoint's position while records carry the lap's
 * generation, then from the front for the next generation, and stops at the
 * first record whose magic, generation or CRC does not match: a torn write
 * at the tail is never mistaken for data, and records of older laps are
 * never read again.
 *
 * Threads: one thread appends (append, sync, undo, skip, tell, used); one
 * checkpoint at a time may run mt_wal_checkpoint on another thread at the
 * same time. Open, replay and close run alone.
 */
#ifndef MT_WAL_H
#define MT_WAL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_err.h"

typedef struct mt_wal mt_wal;

/* A position in the ring: the lap's generation and the byte offset in the file. */
typedef struct mt_wal_pos {
    uint32_t gen;
    uint64_t off;
} mt_wal_pos;

/*
 * Opens 'path', creating and zero-filling it to 'size' bytes if it does not
 * exist (an existing file keeps its own size). Sets *out (NULL on error).
 * MT_EINVAL if size < 1 MiB, MT_EIO on an OS error or a damaged header
 * (the message is logged with the path), MT_EFULL if the disk has no room.
 */
mt_err mt_wal_open(const char *path, uint64_t size, mt_wal **out);

/* Closes the file. mt_wal_close(NULL) does nothing. Does not sync. */
void mt_wal_close(mt_wal *w);

/*
 * Calls 'cb' for every valid record after the last checkpoint's position,
 * in order (across the wrap to the front), and positions the writer after
 * the last one. Stops early if 'cb' returns non-zero and returns that code.
 * The payload passed to cb lives until cb returns. MT_EIO on a read error.
 */
mt_err mt_wal_replay(mt_wal *w,
                     mt_err (*cb)(uint64_t group_id, const void *payload, size_t len, void *arg),
                     void *arg);

/*
 * Writes one record at the write position (not synced). MT_EFULL if the
 * ring has no room for it before the last checkpoint's position (a
 * checkpoint must complete first; see mt_wal_skip); MT_ETOOBIG if it could
 * never fit; MT_ENOMEM; MT_EIO on a write error.
 */
mt_err mt_wal_append(mt_wal *w, uint64_t group_id, const void *payload, size_t len);

/* fdatasync. MT_EIO on failure (the caller must treat the group as not durable). */
mt_err mt_wal_sync(mt_wal *w);

/*
 * Makes the last appended record unreadable (zeroes its header and syncs),
 * for a group whose store commit failed after its record was written; the
 * next record takes its place. Does nothing if there is none, or if a
 * checkpoint has since recorded a position after it.
 */
mt_err mt_wal_undo_last(mt_wal *w);

/* Where the next record goes: a checkpoint position (see mt_wal_checkpoint). */
mt_wal_pos mt_wal_tell(const mt_wal *w);

/*
 * Leaves the rest of the current lap unused: the next record goes to the
 * front of the next lap. A record up to mt_wal_capacity() bytes always fits
 * once a checkpoint at the position this leads to has completed. MT_EFULL
 * (nothing changes) if the write position is already a lap ahead of the
 * last checkpoint.
 */
mt_err mt_wal_skip(mt_wal *w);

/*
 * Records a checkpoint: the store has durably applied every record before
 * 'pos' (a position mt_wal_tell returned, no earlier than the previous
 * checkpoint's), and 'snap' (len bytes, at most 32 KiB - 128; copied) is
 * what it needs to start from that state. Writes and syncs the header; only
 * then does the space before 'pos' become free for appends. May run on
 * another thread while records are appended; one checkpoint at a time.
 * MT_ETOOBIG if snap is too large, MT_EIO (the previous checkpoint stays in
 * force).
 */
mt_err mt_wal_checkpoint(mt_wal *w, mt_wal_pos pos, const void *snap, size_t len);

/*
 * The last checkpoint's snapshot (len 0 if none) and position; valid until
 * the next checkpoint or close.
 */
void mt_wal_snapshot(const mt_wal *w, const void **snap, size_t *len);
mt_wal_pos mt_wal_checkpoint_pos(mt_wal *w);

/*
 * Bytes of the ring in use from the last checkpoint's position to the write
 * position (including the unused end of a lap the writer left), and the
 * room records can use.
 */
uint64_t mt_wal_used(mt_wal *w);
uint64_t mt_wal_capacity(const mt_wal *w);

#endif

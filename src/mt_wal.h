/*
 * mt_wal.h - the write-ahead file: the one sync point of a group commit.
 *
 * A pre-allocated, zero-filled file of fixed size. Each group commit appends
 * one checksummed record (the group's redo operations) and syncs the file
 * once with fdatasync; since the file never grows, that sync writes data
 * blocks only, no file-system metadata. After a checkpoint (the store has
 * made everything durable on its own) the file is reset: the generation in
 * its header goes up by one and writing starts again at the front, so
 * records of older generations are never read again.
 *
 * Layout: two 32 KiB header slots, then records. A slot holds the magic,
 * the generation, the file size, the checkpoint snapshot (opaque bytes the
 * store saves with each generation: LMDB's meta pages) and a CRC-32 of all
 * of it. A new generation is written to slot gen % 2, so a torn header
 * write leaves the previous generation readable; the newer valid slot wins.
 * A record is magic, generation, group id, payload length, CRC-32 of these
 * and the payload, then the payload padded to 8 bytes. A scan stops at the
 * first record whose magic, generation or CRC does not match: a torn write
 * at the tail is never mistaken for data.
 *
 * Used by the store's writer thread only; not thread-safe.
 */
#ifndef MT_WAL_H
#define MT_WAL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_err.h"

typedef struct mt_wal mt_wal;

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
 * Calls 'cb' for every valid record of the current generation, in order,
 * and positions the writer after the last one. Stops early if 'cb' returns
 * non-zero and returns that code. The payload passed to cb lives until cb
 * returns. MT_EIO on a read error.
 */
mt_err mt_wal_replay(mt_wal *w,
                     mt_err (*cb)(uint64_t group_id, const void *payload, size_t len, void *arg),
                     void *arg);

/*
 * Writes one record at the write position (not synced). MT_EFULL if it does
 * not fit in what is left (the caller checkpoints and resets, then retries);
 * MT_ETOOBIG if it could never fit; MT_EIO on a write error.
 */
mt_err mt_wal_append(mt_wal *w, uint64_t group_id, const void *payload, size_t len);

/* fdatasync. MT_EIO on failure (the caller must treat the group as not durable). */
mt_err mt_wal_sync(mt_wal *w);

/*
 * Makes the last appended record unreadable (zeroes its header and syncs),
 * for a group whose store commit failed after its record was written.
 */
mt_err mt_wal_undo_last(mt_wal *w);

/*
 * Starts a new generation: bumps the generation, saves 'snap' (len bytes, at
 * most 32 KiB - 128; copied) with it, syncs the header, and moves the write
 * position to the front. Call only after the store has durably applied
 * every record written so far. MT_ETOOBIG if snap is too large, MT_EIO.
 */
mt_err mt_wal_reset(mt_wal *w, const void *snap, size_t len);

/* The current generation's snapshot (len 0 if none); valid until the next reset or close. */
void mt_wal_snapshot(const mt_wal *w, const void **snap, size_t *len);

/* Bytes of records written in this generation, and the room records can use. */
uint64_t mt_wal_used(const mt_wal *w);
uint64_t mt_wal_capacity(const mt_wal *w);

#endif

/*
 * mt_store.h - the LMDB environment, its named databases, and the
 * group-commit writer.
 *
 * One environment holds every database (mt_db). Reads use read-only
 * transactions (the environment is opened MDB_NOTLS): with fsync
 * durability, a snapshot of the last durable group that readers share.
 * Every write goes through the writer thread: callers submit jobs; the
 * writer gathers whatever jobs are waiting into one LMDB write transaction,
 * runs each in a nested transaction of its own (a failing job is undone
 * alone), and makes the group durable with ONE sync:
 *
 *   durability fsync:  every put/del of a job is also recorded as a redo
 *     operation; the group's redo record goes to the write-ahead file
 *     (mt_wal) and the LMDB transaction is committed without LMDB's own
 *     syncs (MDB_NOSYNC); the writer goes on with the next group while a
 *     sync thread fdatasyncs the write-ahead file once for every group
 *     committed since its last sync, then moves readers to the newest of
 *     them and finishes their jobs. A failed sync fails every later write.
 *     Checkpoints (a quarter of the write-ahead ring in use, LMDB's file
 *     grown by 32 MiB, 1 s after the last one if there were commits, on
 *     request, and at close) run on a checkpoint thread of their own while
 *     the writer goes on: the writer notes the write-ahead
 *     position, LMDB's meta pages and a pinned read transaction at its last
 *     commit; the checkpoint thread syncs LMDB's data file, records the
 *     meta pages and the position in the write-ahead header, and only then
 *     releases the previous pin and the write-ahead space before the
 *     position. The writer waits for a checkpoint only when the write-ahead
 *     file is full (logged). At open, the saved meta pages are put back and
 *     the groups recorded after the checkpoint's position are applied
 *     again. Crash argument: docs/architecture.md.
 *   durability nosync: no write-ahead file, no fsync until a checkpoint (a
 *     sync of LMDB's file on the checkpoint thread); a process crash loses
 *     nothing (the OS has the pages), a power cut may.
 *
 * A job's done callback runs only after its group is durable, on the thread
 * that calls mt_store_complete() (the event loop), so nothing is
 * acknowledged before it is on disk.
 *
 * lmdb.h is included by mt_store.c alone; LMDB codes become mt_err here:
 * MDB_MAP_FULL -> MT_EFULL, MDB_NOTFOUND -> MT_ENOTFOUND, others -> MT_EIO
 * (logged with mdb_strerror and context).
 */
#ifndef MT_STORE_H
#define MT_STORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_err.h"

typedef struct mt_store mt_store;
typedef struct mt_txn mt_txn;
typedef struct mt_cursor mt_cursor;

/* The named databases. Keys and values are bytes; integers in keys are big-endian. */
typedef enum mt_db {
    MT_DB_META = 0, /* engine bookkeeping: "wal.group" -> u64 last applied group */
    MT_DB_LOG,      /* u64 sequence -> event record (mt_event) */
    MT_DB_STREAMS,  /* subject NUL u64 version -> u64 sequence */
    MT_DB_HEADS,    /* subject -> u64 last version */
    MT_DB_IDS,      /* source NUL id -> u64 sequence, for deduplication */
    MT_DB_SUBS,     /* subscription name -> its delivery state (mt_sub) */
    MT_DB_PARKED,   /* name NUL lane NUL u64 sequence -> a held-back message (mt_sub) */
    MT_DB_SCHED,    /* name NUL u64 due-time NUL u64 sequence -> "" : the time index (mt_sub) */
    MT_DB_DLQ,      /* name NUL u64 sequence -> dead letter, JSON (mt_sub) */
    MT_DB_KV,       /* table NUL key -> JSON value written by handlers (mt_sub) */
    MT_DB_SUBDEFS,  /* subscription name -> its definition made over HTTP, JSON (mt_sub) */
    MT_DB_COUNT
} mt_db;

typedef struct mt_store_opts {
    const char *dir;      /* data directory; created if missing */
    uint64_t map_size;    /* bytes */
    uint64_t wal_size;    /* bytes; ignored when nosync */
    bool nosync;          /* durability nosync */
    int64_t checkpoint_interval_us; /* longest time between checkpoints while there
                                     * are commits; 0: 1 s (30 s when nosync) */
} mt_store_opts;

/*
 * Opens (creating if needed) the store in opts->dir, replays the
 * write-ahead file, and starts the writer thread. Sets *out (NULL on error).
 * MT_EIO if the directory or files cannot be opened (logged), MT_EFULL if
 * the map is too small to replay, MT_EINVAL on bad options.
 */
mt_err mt_store_open(const mt_store_opts *opts, mt_store **out);

/*
 * Stops the writer after the jobs already submitted, checkpoints, and
 * closes everything. Jobs submitted after close began fail with MT_ECLOSED.
 * Completion callbacks still pending are run from here. NULL does nothing.
 */
void mt_store_close(mt_store *s);

/* ---- writing ---- */

/*
 * A job: runs on the writer thread inside its own nested write transaction.
 * Returning non-zero undoes everything the job wrote.
 */
typedef mt_err (*mt_store_job_fn)(mt_txn *txn, void *arg);
/*
 * Called once per job with its outcome once its group is durable (or
 * failed): MT_OK, the job's own error, MT_EFULL (map full), MT_EIO,
 * MT_ECLOSED. Runs on the thread calling mt_store_complete().
 */
typedef void (*mt_store_done_fn)(mt_err rc, void *arg);

/*
 * Queues a job. Thread-safe. 'arg' stays the caller's; it must live until
 * 'done' is called. MT_ECLOSED if the store is closing ('done' is not called).
 *
 * Order: jobs run in the order queued, except that a group cut short while
 * publishes wait lets repeatable jobs go ahead of the others (each kind
 * keeps its order). So a job never runs before a repeatable job queued
 * before it: a dispatch job queued after an append sees its events.
 */
mt_err mt_store_submit(mt_store *s, mt_store_job_fn run, mt_store_done_fn done, void *arg);

/*
 * mt_store_submit for a job that may run again after its effects were
 * undone and then does the same: it keeps nothing between runs but what it
 * writes to the store and overwrites in 'arg' (an append: its results).
 * The writer runs consecutive such jobs in one nested transaction; if one
 * fails, the jobs up to it run again each in its own, so a failure still
 * undoes only the failing job.
 */
mt_err mt_store_submit_repeatable(mt_store *s, mt_store_job_fn run, mt_store_done_fn done,
                                  void *arg);

/*
 * Runs one job and waits for its durability on the calling thread (which
 * must not be the one running mt_store_complete's callbacks for it to wait
 * on: the job's outcome is returned, no done callback). For tools and tests.
 */
mt_err mt_store_write(mt_store *s, mt_store_job_fn run, void *arg);

/*
 * Registers 'notify', called on the writer thread whenever finished jobs
 * are waiting for mt_store_complete(). It runs with the store's lock held,
 * so it must only wake the loop (never call back into the store); and once
 * this returns, no call of the previous notify is still running.
 */
void mt_store_set_notify(mt_store *s, void (*notify)(void *arg), void *arg);

/* Runs the done callbacks of finished jobs, in submission order. */
void mt_store_complete(mt_store *s);

/* ---- reading and writing inside a transaction ---- */

/*
 * Begins a read-only transaction of the durable state: with fsync
 * durability, the state after the last group whose write-ahead record is
 * synced, which every reader shares until a newer one is; a group's jobs
 * are finished only once it is, so a job's caller reads what it wrote.
 * Without a write-ahead file, the last committed state. For the loop
 * thread and single-threaded callers: readers that run at once on other
 * threads use mt_store_read_begin_latest(). Sets *out; MT_EIO on failure.
 * End it with mt_store_read_end().
 */
mt_err mt_store_read_begin(mt_store *s, mt_txn **out);

/*
 * Begins a read-only transaction of its own (any thread) on the last
 * committed state, which may not be durable yet: only for work whose
 * results the writer checks again before anything depends on them.
 */
mt_err mt_store_read_begin_latest(mt_store *s, mt_txn **out);
void mt_store_read_end(mt_txn *t);

/*
 * For a thread that reads the latest state again and again (a worker's
 * rounds): renews *t, a transaction of mt_store_read_begin_latest that
 * mt_store_read_pause let go of, on the last committed state; begins one
 * if *t is NULL. Beginning allocates and frees LMDB's transaction each
 * time. On failure *t is ended and NULL. mt_store_read_end ends a paused
 * one too.
 */
mt_err mt_store_read_renew(mt_store *s, mt_txn **t);
void mt_store_read_pause(mt_txn *t);

/*
 * Looks up 'key'. On success *val points into the map and is valid until
 * the transaction ends. MT_ENOTFOUND if absent; MT_EIO otherwise.
 */
mt_err mt_store_get(mt_txn *t, mt_db db, const void *key, size_t klen, const void **val,
                    size_t *vlen);

#define MT_STORE_APPEND 1u /* key is greater than every key in db (the log) */

/*
 * Writes key -> val (write transactions only, i.e. inside a job).
 * MT_EFULL when the map is full, MT_EIO otherwise. After any error the
 * transaction is poisoned: every later call fails until the job returns.
 */
mt_err mt_store_put(mt_txn *t, mt_db db, const void *key, size_t klen, const void *val,
                    size_t vlen, unsigned flags);

/*
 * Writes key -> val unless key is there: then writes nothing and returns
 * MT_EEXISTS with *old set to the value there (valid like a get's). One
 * search where a get and a put would take two. Errors as mt_store_put.
 */
mt_err mt_store_put_new(mt_txn *t, mt_db db, const void *key, size_t klen, const void *val,
                        size_t vlen, const void **old, size_t *oldlen);

/*
 * Savepoints inside a job: mt_store_savepoint begins a nested write
 * transaction of 't' (which must not be used until the savepoint ends);
 * _release keeps its writes in 't', _rollback discards them. Sets *out.
 * MT_EFULL or MT_EIO from the store.
 */
mt_err mt_store_savepoint(mt_txn *t, mt_txn **out);
mt_err mt_store_savepoint_release(mt_txn *sp);
void mt_store_savepoint_rollback(mt_txn *sp);

/* Deletes key. MT_ENOTFOUND if absent. */
mt_err mt_store_del(mt_txn *t, mt_db db, const void *key, size_t klen);

/*
 * Cursors. mt_store_cursor_seek positions at the first key >= 'key'
 * (klen 0: the first key); _last at the last key; _next/_prev move. Each
 * sets the key and value out-params (valid until the transaction ends or the cursor moves) and
 * returns MT_ENOTFOUND at either end.
 */
mt_err mt_store_cursor_open(mt_txn *t, mt_db db, mt_cursor **out);
void mt_store_cursor_close(mt_cursor *c);
mt_err mt_store_cursor_seek(mt_cursor *c, const void *key, size_t klen, const void **k,
                            size_t *kl, const void **v, size_t *vl);
mt_err mt_store_cursor_last(mt_cursor *c, const void **k, size_t *kl, const void **v,
                            size_t *vl);

/* Positions at 'key' exactly and sets its value; MT_ENOTFOUND if absent. */
mt_err mt_store_cursor_find(mt_cursor *c, const void *key, size_t klen, const void **v,
                            size_t *vl);

#define MT_STORE_CURRENT 2u /* the cursor is at 'key' (found just before): no search */

/*
 * Writes key -> val through the cursor (write transactions only), which is
 * left at the key. With MT_STORE_CURRENT the cursor must be at 'key' and
 * the value is replaced where it is. Errors as mt_store_put.
 */
mt_err mt_store_cursor_put(mt_cursor *c, const void *key, size_t klen, const void *val,
                           size_t vlen, unsigned flags);
mt_err mt_store_cursor_next(mt_cursor *c, const void **k, size_t *kl, const void **v,
                            size_t *vl);
mt_err mt_store_cursor_prev(mt_cursor *c, const void **k, size_t *kl, const void **v,
                            size_t *vl);

/*
 * Finds the first key >= 'key' that starts with the first 'plen' bytes of
 * 'key' (a prefix scan's first step). Sets the out-params like a cursor
 * move (valid until the transaction ends or writes). MT_ENOTFOUND if there
 * is none; MT_EIO.
 */
mt_err mt_store_first_with_prefix(mt_txn *t, mt_db db, const void *key, size_t klen,
                                  size_t plen, const void **k, size_t *kl, const void **v,
                                  size_t *vl);

/* ---- checkpoints ---- */

/*
 * Asks for a checkpoint of everything committed before this call; with
 * 'wait', waits until it is durable (or failed) and returns its outcome:
 * MT_OK, MT_EIO (logged; the write-ahead file keeps the data). MT_ECLOSED
 * if the store is closing. Any thread but the writer's and the loop
 * running mt_store_complete for this store's jobs.
 */
mt_err mt_store_checkpoint(mt_store *s, bool wait);

/* The stages of a checkpoint on the checkpoint thread, in order. */
typedef enum mt_store_ckpt_stage {
    MT_STORE_CKPT_SYNCING,  /* before LMDB's data file is synced */
    MT_STORE_CKPT_SYNCED,   /* synced; the write-ahead header still names the previous one */
    MT_STORE_CKPT_RECORDED, /* the header is durable; the previous pin is not yet released */
} mt_store_ckpt_stage;

/*
 * In a job on the writer: the bytes of write-ahead record its writes have
 * taken so far, and the most one job may take (its group's record must
 * fit the write-ahead file; UINT64_MAX with durability nosync). A job
 * over it fails with MT_ETOOBIG, so a job that may write much (a dispatch
 * job running many handlers) stops taking work well before.
 */
size_t mt_txn_job_bytes(const mt_txn *t);
uint64_t mt_txn_job_max(const mt_txn *t);

/*
 * For tests: 'hook' runs on the checkpoint thread at each stage of every
 * checkpoint made there ('n' counts them from 1 since open; the checkpoint
 * at open is not one of them), and may block to hold the checkpoint at that
 * point. NULL removes it. The environment variable
 * MOONTIDE_TEST_CHECKPOINT_HOLD=DIR installs one at open that creates
 * DIR/N-STAGE (syncing, synced, recorded) and waits until the file is
 * removed.
 */
typedef void (*mt_store_ckpt_hook)(mt_store_ckpt_stage stage, uint64_t n, void *arg);
void mt_store_set_checkpoint_hook(mt_store *s, mt_store_ckpt_hook hook, void *arg);

/*
 * Test hook: called on the sync thread before each write-ahead sync, with
 * the last group it makes durable. It may block (holding every group from
 * that one on unfinished and unseen by readers while the writer goes on);
 * an error it returns is taken as the sync's failure.
 */
typedef mt_err (*mt_store_sync_hook)(uint64_t group, void *arg);
void mt_store_set_sync_hook(mt_store *s, mt_store_sync_hook hook, void *arg);

/* ---- introspection ---- */

typedef struct mt_store_stats {
    uint64_t map_size;      /* bytes */
    uint64_t map_used;      /* bytes in use (last page number * page size) */
    uint64_t groups;        /* group commits since open */
    uint64_t jobs;          /* jobs run since open */
    uint64_t nested;        /* nested transactions the jobs ran in (repeatable jobs share) */
    uint64_t syncs;         /* write-ahead syncs (one may make several groups durable) */
    uint64_t checkpoints;   /* durable checkpoints since open, the one at open included */
} mt_store_stats;

void mt_store_get_stats(mt_store *s, mt_store_stats *st);

#endif

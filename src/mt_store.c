#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include "mt_diag.h"
#include "mt_mem.h"
#include "mt_store.h"
#include "mt_util.h"
#include "mt_wal.h"

/*
 * The longest time between checkpoints while there are commits. With the
 * write-ahead file it is short: pages freed after a checkpoint are reused
 * only after the next one, so the pages an interval writes must come from
 * what the interval before freed, or LMDB's file grows (see checkpoint_due).
 * Without it (nosync), a checkpoint is what a power cut falls back to.
 */
#define CHECKPOINT_INTERVAL_US (1 * 1000000LL)
#define NOSYNC_CHECKPOINT_INTERVAL_US (30 * 1000000LL)
#define CHECKPOINT_RETRY_US 1000000LL /* after a failed checkpoint, before the next try */
#define GROUP_MAX_JOBS 4096
#define SHARED_MAX_JOBS 256 /* repeatable jobs run in one nested transaction, at most */
#define GROUP_CUT_US 10000  /* a group this old ends at its next job if publishes wait */
#define REDO_KEEP (4u << 20) /* a group record buffer larger than this is let go before the next */
#define HOLD_ENV "MOONTIDE_TEST_CHECKPOINT_HOLD"
#define REPLAY_HOLD_ENV "MOONTIDE_TEST_REPLAY_HOLD"
#define SYNC_DELAY_ENV "MOONTIDE_TEST_SYNC_DELAY"

static const char *const db_names[MT_DB_COUNT] = {
    "meta", "log", "streams", "heads", "ids", "subs", "parked", "sched", "dlq", "kv", "subdefs",
};

typedef struct job {
    mt_store_job_fn run;
    mt_store_done_fn done;
    void *arg;
    mt_err rc;
    bool repeatable;    /* may run in one nested transaction with its neighbours */
    bool sync;          /* a mt_store_write() caller waits on it */
    bool finished;
    struct job *next;
} job;

/*
 * A read snapshot of a durable state (fsync durability): one LMDB read
 * transaction that every mt_store_read_begin() shares until a newer state
 * is durable. MDB_NOTLS keeps its reader slot across reset and renew, so a
 * pooled one is renewed without LMDB's reader-table lock.
 */
typedef struct read_snap {
    MDB_txn *txn;
    unsigned refs;          /* readers, + 1 while it is the store's current one */
    struct read_snap *next; /* in the pool */
} read_snap;

/* A group the writer finished, waiting for the write-ahead sync that makes it durable. */
typedef struct pending {
    job *jobs;
    uint64_t group; /* its group id; 0 if it committed nothing */
    read_snap *sn;  /* the state just after its commit, or NULL */
    struct pending *next;
} pending;

/* A checkpoint, prepared by the writer and made durable by the checkpoint thread. */
typedef struct ckpt_req {
    uint64_t n;                /* its number since open, from 1 (thread checkpoints only) */
    mt_wal_pos pos;            /* write-ahead position: every later group is recorded after it */
    uint8_t *meta;             /* owned; LMDB's meta pages at the checkpoint (fsync only) */
    size_t meta_len;
    MDB_txn *pin;              /* read txn at the checkpoint; the store's pin once durable */
} ckpt_req;

struct mt_store {
    MDB_env *env;
    MDB_dbi dbi[MT_DB_COUNT];
    mt_wal *wal;               /* NULL when nosync */
    MDB_txn *pin;              /* read txn holding the last checkpoint's pages (fsync only;
                                  replaced under mu by the checkpoint thread) */
    unsigned psize;            /* LMDB page size */
    uint64_t growth_limit;     /* bytes LMDB may grow between checkpoints (pinned pages) */
    uint64_t ckpt_pgno;        /* LMDB's last page number at the last checkpoint */
    char *dir;                 /* owned */
    int lock_fd;               /* flock'ed: one engine per data directory */

    pthread_t writer;
    bool writer_started;
    pthread_t ckpt_thread;     /* makes checkpoints durable while the writer goes on */
    bool ckpt_started;
    pthread_mutex_t mu;        /* guards everything below */
    pthread_cond_t work_cv;    /* jobs queued, or closing */
    pthread_cond_t sync_cv;    /* a synchronous job finished */
    job *queue, *queue_tail;
    atomic_int queued_repeatable; /* repeatable jobs in 'queue'; read by the writer without mu */
    int64_t group_t0;          /* writer thread: when the running group began (mono µs) */
    bool cut_for_publishes;    /* writer thread: run_group's rest was cut off for them */
    job *done, *done_tail;
    bool closing;
    bool sleeping;             /* the writer waits on work_cv: enqueue must signal */
    void (*notify)(void *);
    void *notify_arg;
    mt_store_stats stats;
    pthread_cond_t ckpt_cv;      /* a checkpoint was handed over, or the thread must exit */
    pthread_cond_t ckpt_done_cv; /* a checkpoint finished */
    ckpt_req *ckpt_req;        /* handed over, not yet taken by the checkpoint thread */
    bool ckpt_busy;            /* a checkpoint is handed over and not finished */
    bool ckpt_asked;           /* mt_store_checkpoint wants one */
    bool ckpt_exit;            /* the checkpoint thread must exit once idle */
    uint64_t ckpt_started_n;   /* checkpoints handed over since open */
    uint64_t ckpt_done_n;      /* ... and finished, durable or failed */
    mt_err ckpt_rc;            /* outcome of the last finished one */
    mt_store_ckpt_hook ckpt_hook;
    void *ckpt_hook_arg;
    char *hold_dir;            /* owned; the MOONTIDE_TEST_CHECKPOINT_HOLD test hook */
    pthread_t sync_thread; /* syncs the write-ahead file while the writer goes on */
    bool sync_started;
    pthread_cond_t sync_work_cv;   /* a group was handed to the sync thread, or it must exit */
    pending *sync_q, *sync_q_tail; /* groups handed over, in commit order */
    unsigned sync_inflight;        /* groups handed over and not yet finished */
    bool sync_exit;                /* the sync thread must exit once the queue is empty */
    mt_err failed;                 /* a write-ahead sync failed: every later job fails with it */
    read_snap *durable;            /* what readers see (fsync only); holds a reference */
    read_snap *snap_pool;          /* reset snapshots for reuse */
    unsigned snap_pooled;
    mt_store_sync_hook sync_hook;
    void *sync_hook_arg;

    /* writer thread only */
    mt_buf redo;               /* the current group's redo operations (fsync durability) */
    size_t job_redo;           /* redo.len when the running job began */
    uint64_t job_redo_max;     /* the most redo one job may write (the ring, less a header) */
    uint64_t writes;           /* puts and deletes in the current group */
    uint64_t nested;           /* nested transactions begun (writer thread; stats.nested) */
    uint64_t group;            /* last group id committed */
    int64_t last_checkpoint_us; /* when the last checkpoint started */
    int64_t ckpt_interval_us;  /* checkpoint_due's timer */
    bool dirty;                /* commits since the last checkpoint started */
    bool ckpt_pending;         /* a checkpoint handed over whose end the writer has not seen */
    int64_t ckpt_retry_us;     /* no automatic checkpoint before this (after a failure) */
};

struct mt_txn {
    mt_store *s;
    MDB_txn *txn;
    read_snap *sn; /* for a read of the durable state: the snapshot it shares */
    bool write;
    mt_err poisoned;           /* first error; every later write call fails with it */
    mt_txn *parent;            /* for a savepoint: the transaction it belongs to */
    size_t redo_mark;          /* for a savepoint: redo length when it began */
    uint64_t writes_mark;      /* for a savepoint: write count when it began */
};

struct mt_cursor {
    MDB_cursor *c;
    mt_txn *t;
    mt_db db;
};

enum { REDO_PUT = 1, REDO_DEL = 2 };

/*
 * A full store fails every write until room is made: its error is logged
 * once a second at most, for the process (one store in the engine).
 */
static atomic_llong full_logged_us;
static atomic_ullong full_unlogged;

/* Logs that 'what' failed because the store is full, and why. */
static void log_full(const char *what, const char *why)
{
    int64_t now = mt_mono_us();
    long long last = atomic_load(&full_logged_us);
    if (last && now - last < 1000000) {
        atomic_fetch_add(&full_unlogged, 1);
        return;
    }
    atomic_store(&full_logged_us, now);
    mt_error("store: %s failed: %s; %llu more failed since the last such line", what, why,
             atomic_exchange(&full_unlogged, 0));
}

static mt_err map_mdb(int rc, const char *what)
{
    if (rc == MDB_SUCCESS) {
        return MT_OK;
    }
    if (rc == MDB_NOTFOUND) {
        return MT_ENOTFOUND;
    }
    if (rc == MDB_MAP_FULL) {
        log_full(what, "the store is full (engine.map_size)");
        return MT_EFULL;
    }
    if (rc == ENOSPC) {
        log_full(what, "no space left on device");
        return MT_EFULL;
    }
    mt_error("store: %s failed: %s", what, mdb_strerror(rc));
    return MT_EIO;
}

/*
 * Commits 'txn' (not nested). LMDB reports a short write of its pages as
 * EIO, and a short write is what a full file system gives: asked how much
 * room is left, a file system with under 1 MiB turns that EIO into "no
 * space left", so that the request gets 507 and the log says what to do.
 */
static mt_err commit_txn(mt_store *s, MDB_txn *txn, const char *what)
{
    int rc = mdb_txn_commit(txn);
    struct statvfs fs;
    if ((rc == EIO || rc == ENOSPC) && statvfs(s->dir, &fs) == 0 &&
        (uint64_t) fs.f_bavail * fs.f_frsize < (1u << 20)) {
        char why[600];
        snprintf(why, sizeof why,
                 "no space left on the file system of the data directory '%.400s' (%llu bytes "
                 "free); nothing of it was stored",
                 s->dir, (unsigned long long) fs.f_bavail * fs.f_frsize);
        log_full(what, why);
        return MT_EFULL;
    }
    return map_mdb(rc, what);
}

/* ---- open and close ---- */

/*
 * Refuses a data file shorter than its meta page says: LMDB would read the
 * missing pages through its map and the process would die of SIGBUS. A
 * valid file never is (a commit writes its pages before its meta page, and
 * a checkpoint syncs them before it is recorded), so this is a damaged or
 * partly copied data directory.
 */
static mt_err check_file_size(mt_store *s)
{
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &st);
    char *path = mt_xasprintf("%s/data.mdb", s->dir);
    struct stat fs;
    mt_err rc = MT_OK;
    uint64_t need = ((uint64_t) info.me_last_pgno + 1) * st.ms_psize;
    if (stat(path, &fs) != 0) {
        mt_error("store: cannot stat '%s': %s", path, strerror(errno));
        rc = MT_EIO;
    } else if ((uint64_t) fs.st_size < need) {
        mt_error("store: '%s' holds %lld bytes but its meta page refers to %llu: the data "
                 "directory is damaged (a truncated or partly copied file); not starting",
                 path, (long long) fs.st_size, (unsigned long long) need);
        rc = MT_EIO;
    }
    free(path);
    return rc;
}

static mt_err make_dir(const char *dir)
{
    char *p = mt_xstrdup(dir);
    for (char *c = p + 1; *c; c++) {
        if (*c == '/') {
            *c = '\0';
            mkdir(p, 0700);
            *c = '/';
        }
    }
    int rc = mkdir(p, 0700);
    free(p);
    if (rc && errno != EEXIST) {
        mt_error("store: cannot create data directory '%s': %s", dir, strerror(errno));
        return MT_EIO;
    }
    return MT_OK;
}

static mt_err lock_dir(mt_store *s)
{
    char *path = mt_xasprintf("%s/LOCK", s->dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (s->lock_fd < 0) {
        mt_error("store: cannot open '%s/LOCK': %s", s->dir, strerror(errno));
        return MT_EIO;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB)) {
        mt_error("store: data directory '%s' is in use by another moontide process", s->dir);
        return MT_EUNAVAIL;
    }
    return MT_OK;
}

/* Applies one redo record (a whole group) inside 'txn'. */
static mt_err apply_redo(mt_store *s, MDB_txn *txn, const uint8_t *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        if (len - off < 12) {
            return MT_EIO;
        }
        uint8_t op = p[off];
        uint8_t db = p[off + 1];
        uint32_t kl, vl;
        memcpy(&kl, p + off + 4, 4);
        memcpy(&vl, p + off + 8, 4);
        off += 12;
        if (db >= MT_DB_COUNT || kl > len - off || vl > len - off - kl) {
            return MT_EIO;
        }
        MDB_val k = {kl, (void *) (p + off)};
        MDB_val v = {vl, (void *) (p + off + kl)};
        off += (size_t) kl + vl;
        int rc;
        if (op == REDO_PUT) {
            rc = mdb_put(txn, s->dbi[db], &k, &v, 0);
        } else if (op == REDO_DEL) {
            rc = mdb_del(txn, s->dbi[db], &k, NULL);
            if (rc == MDB_NOTFOUND) {
                rc = MDB_SUCCESS;
            }
        } else {
            return MT_EIO;
        }
        if (rc) {
            return map_mdb(rc, "write-ahead replay");
        }
    }
    return MT_OK;
}

static mt_err put_group_id(mt_store *s, MDB_txn *txn, uint64_t group)
{
    uint8_t b[8];
    mt_put_be64(b, group);
    MDB_val k = {9, "wal.group"};
    MDB_val v = {8, b};
    return map_mdb(mdb_put(txn, s->dbi[MT_DB_META], &k, &v, 0), "group marker");
}

typedef struct replay_state {
    mt_store *s;
    uint64_t applied;   /* last group LMDB had */
    uint64_t replayed;  /* groups applied again */
} replay_state;

/*
 * The test hooks' wait: creates 'path' and returns once something else
 * (a test) removes it. The test may instead kill the process meanwhile.
 */
static void hold_at(const char *path, const char *hook)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        mt_error("store: %s: cannot create '%s': %s", hook, path, strerror(errno));
        return;
    }
    close(fd);
    struct timespec ts = {0, 5 * 1000 * 1000};
    while (access(path, F_OK) == 0) {
        nanosleep(&ts, NULL);
    }
}

/*
 * The MOONTIDE_TEST_REPLAY_HOLD=PATH:N test hook: once N groups are
 * replayed at open, holds there (hold_at PATH), so that a test can kill
 * the engine in the middle of a recovery.
 */
static void replay_hold(uint64_t replayed)
{
    const char *hold = getenv(REPLAY_HOLD_ENV);
    const char *colon = hold ? strrchr(hold, ':') : NULL;
    if (!colon || strtoull(colon + 1, NULL, 10) != replayed) {
        return;
    }
    char *path = mt_xstrndup(hold, (size_t) (colon - hold));
    hold_at(path, REPLAY_HOLD_ENV);
    free(path);
}

static mt_err replay_group(uint64_t group, const void *payload, size_t len, void *arg)
{
    replay_state *r = arg;
    mt_store *s = r->s;
    if (group <= r->applied) {
        return MT_OK;
    }
    MDB_txn *txn;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "replay begin");
    if (rc) {
        return rc;
    }
    rc = apply_redo(s, txn, payload, len);
    if (rc == MT_EIO) {
        mt_error("store: write-ahead group %llu is malformed", (unsigned long long) group);
    }
    if (rc == MT_OK) {
        rc = put_group_id(s, txn, group);
    }
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    rc = commit_txn(s, txn, "replay commit");
    if (rc == MT_OK) {
        r->applied = group;
        r->replayed++;
        replay_hold(r->replayed);
    }
    return rc;
}

/*
 * Reads LMDB's two meta pages (pages 0 and 1 of data.mdb) into a new buffer,
 * through LMDB's own descriptor: opening the file for each checkpoint made
 * every checkpoint, and so every write after it, fail once the engine was
 * out of descriptors.
 */
static mt_err read_meta_pages(mt_store *s, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    mdb_filehandle_t fd;
    size_t n = 2 * (size_t) s->psize;
    uint8_t *buf = mt_xmalloc(n);
    int mrc = mdb_env_get_fd(s->env, &fd);
    ssize_t got = mrc == 0 ? pread(fd, buf, n, 0) : -1;
    if (got != (ssize_t) n) {
        mt_error("store: cannot read the meta pages of '%s/data.mdb': %s", s->dir,
                 mrc ? mdb_strerror(mrc) : got < 0 ? strerror(errno) : "the file is shorter");
        free(buf);
        return MT_EIO;
    }
    *out = buf;
    *len = n;
    return MT_OK;
}

/* ---- checkpoints ----
 *
 * A checkpoint at state T (the last committed group) is prepared by the
 * writer, between groups or with a group's transaction not yet committed:
 * it notes the write-ahead position P (every group after T is recorded at
 * or after P), reads LMDB's meta pages (they describe T: an uncommitted
 * transaction writes no meta page) and begins a read transaction, which
 * sees T and keeps LMDB from reusing any page of T's tree. The checkpoint
 * thread then syncs LMDB's data file, so T's pages, written before P was
 * noted, are on disk; records T's meta pages and P in the write-ahead
 * header, synced; and only then releases the previous checkpoint's read
 * transaction and lets the write-ahead space before P be reused. The writer
 * goes on committing groups after P meanwhile. Crash argument:
 * docs/architecture.md.
 */

static mt_err ckpt_prepare(mt_store *s, ckpt_req *req)
{
    if (!s->wal) {
        return MT_OK; /* nosync durability: a checkpoint is a sync of LMDB's file */
    }
    req->pos = mt_wal_tell(s->wal);
    mt_err rc = read_meta_pages(s, &req->meta, &req->meta_len);
    if (rc == MT_OK) {
        rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &req->pin), "pin checkpoint");
    }
    return rc;
}

static void ckpt_free(ckpt_req *req)
{
    if (req) {
        if (req->pin) {
            mdb_txn_abort(req->pin);
        }
        free(req->meta);
        free(req);
    }
}

static void ckpt_stage(mt_store *s, const ckpt_req *req, mt_store_ckpt_stage stage)
{
    pthread_mutex_lock(&s->mu);
    mt_store_ckpt_hook hook = s->ckpt_hook;
    void *arg = s->ckpt_hook_arg;
    pthread_mutex_unlock(&s->mu);
    if (hook) {
        hook(stage, req->n, arg);
    }
}

/*
 * Writes LMDB's dirty pages out a piece at a time (a mebibyte, or 1/256 of
 * a larger file), each piece finished before the next starts, so that the
 * checkpoint's sync that follows has little left to write. A sync of all
 * of it at once filled the disk's queue, and the write-ahead syncs of the
 * groups committed meanwhile waited behind it. Only an optimisation: the
 * sync after it is what makes the checkpoint durable, and a failure here is
 * left to it.
 */
static void writeback_gently(mt_store *s)
{
    int fd;
    struct stat st;
    if (mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &st) != 0) {
        return;
    }
    /* At most 256 pieces, however large the file: a second's dirty pages
     * spread over it, so a piece holds about 1/256 of them. */
    off_t piece = st.st_size / 256 > (1 << 20) ? st.st_size / 256 : (1 << 20);
    for (off_t off = 0; off < st.st_size; off += piece) {
        if (sync_file_range(fd, off, piece,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
            return;
        }
    }
}

/* Makes a prepared checkpoint durable (the checkpoint thread, or open with hooks false). */
static mt_err ckpt_make(mt_store *s, ckpt_req *req, bool hooks)
{
    if (hooks) {
        ckpt_stage(s, req, MT_STORE_CKPT_SYNCING);
    }
    writeback_gently(s);
    /*
     * Without MDB_WRITEMAP this is an fdatasync of data.mdb and takes no
     * LMDB lock, so the writer's commits go on beside it.
     */
    mt_err rc = map_mdb(mdb_env_sync(s->env, 1), "checkpoint sync");
    if (rc == MT_OK && s->wal) {
        if (hooks) {
            ckpt_stage(s, req, MT_STORE_CKPT_SYNCED);
        }
        rc = mt_wal_checkpoint(s->wal, req->pos, req->meta, req->meta_len);
        if (rc == MT_OK && hooks) {
            ckpt_stage(s, req, MT_STORE_CKPT_RECORDED);
        }
    }
    return rc;
}

/*
 * Ends a made (rc MT_OK) or failed checkpoint. A durable one's pin replaces
 * the previous pin, whose pages LMDB may now reuse: the header no longer
 * refers to them. A failed one's pin goes, the previous checkpoint stays.
 */
static void ckpt_finish(mt_store *s, ckpt_req *req, mt_err rc, bool counted)
{
    pthread_mutex_lock(&s->mu);
    if (rc == MT_OK) {
        MDB_txn *old = s->pin;
        s->pin = req->pin;
        req->pin = old;
        s->stats.checkpoints++;
    }
    if (counted) {
        s->ckpt_rc = rc;
        s->ckpt_busy = false;
        s->ckpt_done_n++;
        pthread_cond_broadcast(&s->ckpt_done_cv);
        if (s->sleeping) {
            pthread_cond_signal(&s->work_cv);
        }
    }
    pthread_mutex_unlock(&s->mu);
    ckpt_free(req);
}

static void *ckpt_main(void *arg)
{
    mt_store *s = arg;
    pthread_setname_np(pthread_self(), "checkpoint");
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->ckpt_req && !s->ckpt_exit) {
            pthread_cond_wait(&s->ckpt_cv, &s->mu);
        }
        ckpt_req *req = s->ckpt_req;
        if (!req) {
            break;
        }
        s->ckpt_req = NULL;
        pthread_mutex_unlock(&s->mu);
        int64_t t0 = mt_mono_us();
        mt_err rc = ckpt_make(s, req, true);
        if (rc) {
            mt_error("store: checkpoint failed; the write-ahead file keeps the data");
        } else {
            MDB_envinfo info;
            mdb_env_info(s->env, &info);
            mt_debug("store: checkpoint made in %.1f ms (data file: %llu MiB used)",
                     (double) (mt_mono_us() - t0) / 1000.0,
                     (unsigned long long) (info.me_last_pgno + 1) * s->psize >> 20);
        }
        ckpt_finish(s, req, rc, true);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Writer thread, mu held: takes note of a checkpoint the thread has finished. */
static void ckpt_observe(mt_store *s)
{
    if (s->ckpt_pending && !s->ckpt_busy) {
        s->ckpt_pending = false;
        if (s->ckpt_rc) {
            /* Try again later; meanwhile the write-ahead file keeps the data. */
            s->dirty = true;
            s->ckpt_retry_us = mt_mono_us() + CHECKPOINT_RETRY_US;
        }
    }
}

/*
 * Writer thread, mu not held, no checkpoint pending: prepares a checkpoint
 * of the last committed group and hands it to the checkpoint thread.
 */
static mt_err ckpt_start(mt_store *s)
{
    mt_assert(!s->ckpt_pending);
    ckpt_req *req = mt_xcalloc(1, sizeof *req);
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    mt_err rc = ckpt_prepare(s, req);
    pthread_mutex_lock(&s->mu);
    req->n = ++s->ckpt_started_n;
    s->ckpt_asked = false;
    if (rc) {
        s->ckpt_rc = rc;
        s->ckpt_done_n++;
        pthread_cond_broadcast(&s->ckpt_done_cv);
        s->ckpt_retry_us = mt_mono_us() + CHECKPOINT_RETRY_US;
    } else {
        s->ckpt_busy = true;
        s->ckpt_req = req;
        pthread_cond_signal(&s->ckpt_cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        mt_error("store: cannot start a checkpoint; the write-ahead file keeps the data");
        ckpt_free(req);
        return rc;
    }
    s->ckpt_pending = true;
    s->ckpt_pgno = info.me_last_pgno;
    s->last_checkpoint_us = mt_mono_us();
    s->dirty = false;
    return MT_OK;
}

/* Writer thread, mu not held: waits for the pending checkpoint, returns its outcome. */
static mt_err ckpt_wait(mt_store *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->ckpt_busy) {
        pthread_cond_wait(&s->ckpt_done_cv, &s->mu);
    }
    mt_err rc = s->ckpt_pending ? s->ckpt_rc : MT_OK;
    ckpt_observe(s);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* At open, before the threads start: a checkpoint made on the calling thread. */
static mt_err checkpoint_now(mt_store *s)
{
    ckpt_req *req = mt_xcalloc(1, sizeof *req);
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    mt_err rc = ckpt_prepare(s, req);
    if (rc == MT_OK) {
        rc = ckpt_make(s, req, false);
    }
    if (rc == MT_OK) {
        s->ckpt_pgno = info.me_last_pgno;
        s->last_checkpoint_us = mt_mono_us();
        s->dirty = false;
    }
    ckpt_finish(s, req, rc, false);
    return rc;
}

/* The MOONTIDE_TEST_SYNC_DELAY=MS test hook: every write-ahead sync takes MS longer (a slow disk). */
static mt_err slow_sync(uint64_t group, void *arg)
{
    (void) group;
    unsigned ms = (unsigned) (uintptr_t) arg;
    struct timespec ts = {(time_t) (ms / 1000), (long) (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return MT_OK;
}

/*
 * The MOONTIDE_TEST_CHECKPOINT_HOLD=DIR test hook: at each stage of each
 * checkpoint made on the checkpoint thread, creates DIR/N-STAGE (N counts
 * from 1 since open; STAGE is syncing, synced or recorded) and waits until
 * the file is removed, so a test can crash the engine at a known point of
 * a checkpoint. Not for production: a held checkpoint holds the next ones.
 */
static void hold_at_file(mt_store_ckpt_stage stage, uint64_t n, void *arg)
{
    static const char *const names[] = {"syncing", "synced", "recorded"};
    char *path = mt_xasprintf("%s/%llu-%s", (const char *) arg, (unsigned long long) n,
                              names[stage]);
    hold_at(path, HOLD_ENV);
    free(path);
}

/*
 * Puts the last checkpoint's meta pages back into data.mdb before LMDB
 * opens it, so LMDB starts from the checkpoint's intact tree whatever the
 * OS wrote of later, unsynced commits; the write-ahead file then re-applies
 * every group since. After a clean stop the snapshot equals the file's own
 * meta pages, so this changes nothing.
 */
static mt_err restore_checkpoint(mt_store *s)
{
    const void *snap;
    size_t len;
    mt_wal_snapshot(s->wal, &snap, &len);
    if (len == 0) {
        return MT_OK;
    }
    char *path = mt_xasprintf("%s/data.mdb", s->dir);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    mt_err rc = MT_OK;
    struct stat fs;
    if (fd < 0) {
        mt_error("store: '%s' is missing but the write-ahead file has a checkpoint: "
                 "refusing to start on a partial data directory", path);
        rc = MT_EIO;
    } else if (fstat(fd, &fs) == 0 && (uint64_t) fs.st_size < len) {
        /* Writing the snapshot would overwrite what is left of it, and it
         * cannot be a data file the checkpoint was made from. */
        mt_error("store: '%s' holds %lld bytes, less than the %zu bytes of LMDB's meta pages the "
                 "write-ahead file's checkpoint restores: the data directory is damaged (a "
                 "truncated file); not starting, and the file is left as it is",
                 path, (long long) fs.st_size, len);
        rc = MT_EIO;
        close(fd);
    } else {
        if (pwrite(fd, snap, len, 0) != (ssize_t) len || fdatasync(fd)) {
            mt_error("store: cannot restore the checkpoint into '%s': %s", path, strerror(errno));
            rc = MT_EIO;
        }
        close(fd);
    }
    free(path);
    return rc;
}

/*
 * Replays the write-ahead groups after the checkpoint, then makes a
 * checkpoint of the result. The read transaction 'pin' holds the
 * checkpoint's tree until then, as the checkpoint's pin does at run time:
 * each replayed group commits, and without it LMDB would reuse the pages
 * the groups free, which are that tree's. Killed mid-replay, the next
 * start restores the checkpoint's meta pages again, over a tree that must
 * be whole (it was not: every start after such a kill failed).
 */
static mt_err recover(mt_store *s)
{
    MDB_txn *pin;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &pin), "recovery begin");
    if (rc) {
        return rc;
    }
    MDB_val k = {9, "wal.group"}, v;
    replay_state r = {s, 0, 0};
    if (mdb_get(pin, s->dbi[MT_DB_META], &k, &v) == MDB_SUCCESS && v.mv_size == 8) {
        r.applied = mt_get_be64(v.mv_data);
    }
    if (s->wal) {
        rc = mt_wal_replay(s->wal, replay_group, &r);
        if (rc == MT_OK && r.replayed) {
            mt_info("store: replayed %llu group(s) from the write-ahead file",
                    (unsigned long long) r.replayed);
        }
    }
    if (rc == MT_OK) {
        s->group = r.applied;
        rc = checkpoint_now(s);
    }
    mdb_txn_abort(pin);
    return rc;
}

/*
 * Makes the write-ahead file 'size' bytes if it is another size (it keeps
 * the size it was made with, and engine.wal_size would otherwise be
 * ignored on an existing data directory). Right after recovery it holds
 * nothing the checkpoint just made does not, so a new file is made beside
 * it, a checkpoint of the same state recorded in it, and it is renamed over
 * the old one. A crash before the rename leaves the old file, whose
 * checkpoint is of that same state; after it, the new one. A failure
 * leaves the old file in use, with a warning.
 */
static void resize_wal(mt_store *s, uint64_t size)
{
    if (size < (1u << 20)) {
        return; /* none asked for (mt_wal_open refuses less) */
    }
    char *path = mt_xasprintf("%s/wal", s->dir), *fresh = mt_xasprintf("%s/wal.new", s->dir);
    unlink(fresh); /* left by a start that stopped here */
    struct stat st;
    if (stat(path, &st) == 0 && (uint64_t) st.st_size != size) {
        mt_wal *w, *old = s->wal;
        mt_err rc = mt_wal_open(fresh, size, &w);
        if (rc == MT_OK) {
            s->wal = w;
            rc = checkpoint_now(s);
            if (rc == MT_OK && rename(fresh, path) != 0) {
                mt_error("store: cannot rename '%s' to '%s': %s", fresh, path, strerror(errno));
                rc = MT_EIO;
            }
            if (rc == MT_OK) {
                mt_sync_dir(s->dir);
                mt_wal_close(old);
                mt_info("store: the write-ahead file is now %llu bytes (engine.wal_size; it "
                        "was %llu)", (unsigned long long) size, (unsigned long long) st.st_size);
            } else {
                s->wal = old;
                mt_wal_close(w);
                unlink(fresh);
            }
        }
        if (rc) {
            mt_warn("store: cannot make the write-ahead file %llu bytes (engine.wal_size): %s; "
                    "it stays %llu bytes", (unsigned long long) size, mt_err_str(rc),
                    (unsigned long long) st.st_size);
        }
    }
    free(path);
    free(fresh);
}

static void *writer_main(void *arg);

static read_snap *snap_take(mt_store *s);
static void snap_unref(mt_store *s, read_snap *sn);
static void *sync_main(void *arg);

mt_err mt_store_open(const mt_store_opts *opts, mt_store **out)
{
    *out = NULL;
    if (!opts->dir || !*opts->dir || opts->map_size < (1u << 20)) {
        return MT_EINVAL;
    }
    mt_store *s = mt_xcalloc(1, sizeof *s);
    s->lock_fd = -1;
    s->dir = mt_xstrdup(opts->dir);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->sync_cv, NULL);
    pthread_cond_init(&s->ckpt_cv, NULL);
    pthread_cond_init(&s->ckpt_done_cv, NULL);
    mt_buf_init(&s->redo);
    pthread_cond_init(&s->sync_work_cv, NULL);
    const char *hold = getenv(HOLD_ENV);
    if (hold && *hold) {
        s->hold_dir = mt_xstrdup(hold);
        s->ckpt_hook = hold_at_file;
        s->ckpt_hook_arg = s->hold_dir;
        mt_warn("store: %s is set: checkpoints wait at '%s' (a test hook)", HOLD_ENV, hold);
    }
    const char *slow = getenv(SYNC_DELAY_ENV);
    if (slow && *slow) {
        unsigned ms = (unsigned) strtoul(slow, NULL, 10) % 60000;
        s->sync_hook = slow_sync;
        s->sync_hook_arg = (void *) (uintptr_t) ms;
        mt_warn("store: %s is set: every write-ahead sync takes %u ms longer (a test hook)",
                SYNC_DELAY_ENV, ms);
    }

    mt_err rc = make_dir(s->dir);
    if (rc == MT_OK) {
        rc = lock_dir(s);
    }
    if (rc == MT_OK && !opts->nosync) {
        char *path = mt_xasprintf("%s/wal", s->dir);
        rc = mt_wal_open(path, opts->wal_size, &s->wal);
        free(path);
        if (rc == MT_OK) {
            rc = restore_checkpoint(s);
        }
    }
    if (rc == MT_OK) {
        rc = map_mdb(mdb_env_create(&s->env), "environment create");
    }
    if (rc == MT_OK) {
        mdb_env_set_maxdbs(s->env, 32);
        mdb_env_set_maxreaders(s->env, 1024);
        rc = map_mdb(mdb_env_set_mapsize(s->env, (size_t) opts->map_size), "set map size");
    }
    if (rc == MT_OK) {
        /*
         * NOSYNC: the write-ahead file is the sync point (or, with nosync
         * durability, nothing is). NOTLS: read transactions are not tied to
         * a thread.
         */
        int mrc = mdb_env_open(s->env, s->dir, MDB_NOSYNC | MDB_NOTLS, 0600);
        if (mrc) {
            mt_error("store: cannot open LMDB environment in '%s': %s", s->dir,
                     mdb_strerror(mrc));
            rc = MT_EIO;
        }
    }
    if (rc == MT_OK) {
        rc = check_file_size(s);
    }
    if (rc == MT_OK) {
        MDB_txn *txn;
        rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "open databases");
        for (int i = 0; rc == MT_OK && i < MT_DB_COUNT; i++) {
            rc = map_mdb(mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i]), db_names[i]);
        }
        if (rc == MT_OK) {
            rc = map_mdb(mdb_txn_commit(txn), "open databases commit");
        } else if (txn) {
            mdb_txn_abort(txn);
        }
    }
    if (rc == MT_OK) {
        MDB_stat st;
        mdb_env_stat(s->env, &st);
        s->psize = st.ms_psize;
        s->growth_limit = opts->map_size / 16 < (32u << 20) ? opts->map_size / 16 : (32u << 20);
        s->ckpt_interval_us = opts->checkpoint_interval_us > 0 ? opts->checkpoint_interval_us
                              : opts->nosync ? NOSYNC_CHECKPOINT_INTERVAL_US
                                             : CHECKPOINT_INTERVAL_US;
        rc = recover(s);
    }
    if (rc == MT_OK && s->wal) {
        resize_wal(s, opts->wal_size);
        s->durable = snap_take(s);
        if (!s->durable) {
            rc = MT_EIO;
        } else if (pthread_create(&s->sync_thread, NULL, sync_main, s)) {
            mt_error("store: cannot start the sync thread");
            rc = MT_EIO;
        } else {
            s->sync_started = true;
        }
    }
    if (rc == MT_OK) {
        if (pthread_create(&s->ckpt_thread, NULL, ckpt_main, s)) {
            mt_error("store: cannot start the checkpoint thread");
            rc = MT_EIO;
        } else {
            s->ckpt_started = true;
        }
    }
    if (rc == MT_OK) {
        if (pthread_create(&s->writer, NULL, writer_main, s)) {
            mt_error("store: cannot start the writer thread");
            rc = MT_EIO;
        } else {
            s->writer_started = true;
        }
    }
    if (rc) {
        mt_store_close(s);
        return rc;
    }
    *out = s;
    return MT_OK;
}

void mt_store_close(mt_store *s)
{
    if (!s) {
        return;
    }
    if (s->writer_started) {
        pthread_mutex_lock(&s->mu);
        s->closing = true;
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->writer, NULL);
    }
    if (s->sync_started) {
        /* It finishes every group the writer handed over before it exits. */
        pthread_mutex_lock(&s->mu);
        s->sync_exit = true;
        pthread_cond_signal(&s->sync_work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->sync_thread, NULL);
    }
    if (s->writer_started) {
        mt_store_complete(s);
    }
    if (s->durable) {
        mt_assert(s->durable->refs == 1); /* every reader has ended */
        snap_unref(s, s->durable);
    }
    for (read_snap *sn = s->snap_pool, *next; sn; sn = next) {
        next = sn->next;
        mdb_txn_abort(sn->txn);
        free(sn);
    }
    if (s->ckpt_started) {
        /* The writer waited for every checkpoint it started: the thread is idle. */
        pthread_mutex_lock(&s->mu);
        s->ckpt_exit = true;
        pthread_cond_signal(&s->ckpt_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->ckpt_thread, NULL);
    }
    if (s->pin) {
        mdb_txn_abort(s->pin);
    }
    mt_wal_close(s->wal);
    if (s->env) {
        mdb_env_close(s->env);
    }
    if (s->lock_fd >= 0) {
        close(s->lock_fd);
    }
    mt_buf_free(&s->redo);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->sync_cv);
    pthread_cond_destroy(&s->ckpt_cv);
    pthread_cond_destroy(&s->ckpt_done_cv);
    pthread_cond_destroy(&s->sync_work_cv);
    free(s->hold_dir);
    free(s->dir);
    free(s);
}

/* ---- the durable state and the sync thread (fsync durability) ---- */

#define SNAP_POOL_MAX 8

/*
 * A snapshot of the last committed state, with one reference: taken at
 * open and by the writer right after each commit, before its next group
 * begins. NULL if LMDB cannot give a read transaction (logged).
 */
static read_snap *snap_take(mt_store *s)
{
    pthread_mutex_lock(&s->mu);
    read_snap *sn = s->snap_pool;
    if (sn) {
        s->snap_pool = sn->next;
        s->snap_pooled--;
    }
    pthread_mutex_unlock(&s->mu);
    int mrc;
    if (sn) {
        mrc = mdb_txn_renew(sn->txn);
        if (mrc) {
            mdb_txn_abort(sn->txn);
            free(sn);
            sn = NULL;
        }
    }
    if (!sn) {
        sn = mt_xcalloc(1, sizeof *sn);
        mrc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &sn->txn);
        if (mrc) {
            mt_error("store: cannot begin a read snapshot: %s", mdb_strerror(mrc));
            free(sn);
            return NULL;
        }
    }
    sn->refs = 1;
    sn->next = NULL;
    return sn;
}

/* mu held: drops a reference; the last one resets the snapshot into the pool. */
static void snap_unref(mt_store *s, read_snap *sn)
{
    if (!sn || --sn->refs > 0) {
        return;
    }
    if (s->snap_pooled < SNAP_POOL_MAX) {
        mdb_txn_reset(sn->txn);
        sn->next = s->snap_pool;
        s->snap_pool = sn;
        s->snap_pooled++;
    } else {
        mdb_txn_abort(sn->txn);
        free(sn);
    }
}

/*
 * mu held: the jobs of a finished group go to their callers: the
 * synchronous ones are marked finished, the others queued for
 * mt_store_complete() and the loop woken.
 */
static void finish_jobs(mt_store *s, job *jobs)
{
    bool wake = false;
    for (job *j = jobs, *next; j; j = next) {
        next = j->next;
        j->next = NULL;
        s->stats.jobs++;
        if (j->sync) {
            j->finished = true;
            continue;
        }
        if (s->done_tail) {
            s->done_tail->next = j;
        } else {
            s->done = j;
        }
        s->done_tail = j;
        wake = true;
    }
    pthread_cond_broadcast(&s->sync_cv);
    /*
     * Called with the lock held, so that once mt_store_set_notify has
     * replaced it no call of the old one is still running: the engine
     * frees the wake-up event right after detaching it at shutdown.
     */
    if (wake && s->notify) {
        s->notify(s->notify_arg);
    }
}

/*
 * Writer thread: hands a finished group to the sync thread (fsync), which
 * finishes its jobs once its write-ahead record is synced, after those of
 * every group before it: a group that committed nothing (duplicates, say)
 * may answer with what an earlier one wrote, so it waits too, unless no
 * group does. 'group' is its id if it committed, else 0. A snapshot still
 * queued is dropped: the sync that takes this group covers the group
 * before it too.
 */
static void hand_to_sync(mt_store *s, job *jobs, uint64_t group)
{
    read_snap *sn = group ? snap_take(s) : NULL;
    pthread_mutex_lock(&s->mu);
    if (!group && s->sync_inflight == 0) {
        finish_jobs(s, jobs);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    pending *p = mt_xcalloc(1, sizeof *p);
    p->jobs = jobs;
    p->group = group;
    p->sn = sn;
    s->sync_inflight++;
    if (s->sync_q_tail) {
        if (p->sn) {
            for (pending *q = s->sync_q; q; q = q->next) {
                snap_unref(s, q->sn);
                q->sn = NULL;
            }
        }
        s->sync_q_tail->next = p;
    } else {
        s->sync_q = p;
    }
    s->sync_q_tail = p;
    pthread_cond_signal(&s->sync_work_cv);
    pthread_mutex_unlock(&s->mu);
}

/*
 * The sync thread: takes every group handed over, makes them durable with
 * one fdatasync of the write-ahead file (their records were written before
 * they were handed over), then lets readers see the newest of them and
 * finishes their jobs. A failed sync fails its groups' jobs and leaves the
 * store failed: after a failed fdatasync the kernel may have dropped the
 * pages it could not write, so no later sync can vouch for them, and every
 * later job fails with the same error; readers keep the last durable state.
 */
static void *sync_main(void *arg)
{
    mt_store *s = arg;
    pthread_setname_np(pthread_self(), "sync");
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->sync_q && !s->sync_exit) {
            pthread_cond_wait(&s->sync_work_cv, &s->mu);
        }
        pending *batch = s->sync_q;
        if (!batch) {
            break;
        }
        s->sync_q = s->sync_q_tail = NULL;
        mt_err rc = s->failed;
        mt_store_sync_hook hook = s->sync_hook;
        void *hook_arg = s->sync_hook_arg;
        pthread_mutex_unlock(&s->mu);
        uint64_t last = 0;
        for (pending *p = batch; p; p = p->next) {
            last = p->group ? p->group : last;
        }
        bool synced = false;
        if (rc == MT_OK && last) {
            if (hook) {
                rc = hook(last, hook_arg);
            }
            if (rc == MT_OK) {
                rc = mt_wal_sync(s->wal);
            }
            synced = true;
        }
        pthread_mutex_lock(&s->mu);
        s->stats.syncs += synced;
        if (rc && !s->failed) {
            s->failed = rc;
            mt_error("store: the write-ahead sync of group %llu failed; the store refuses "
                     "every write from now on (restart the engine: recovery keeps what was "
                     "durable)",
                     (unsigned long long) last);
        }
        for (pending *p = batch, *next; p; p = next) {
            next = p->next;
            if (p->sn && rc == MT_OK) {
                /* The newest group with a snapshot: hand_to_sync dropped older ones. */
                snap_unref(s, s->durable);
                s->durable = p->sn;
            } else {
                snap_unref(s, p->sn);
            }
            for (job *j = p->jobs; rc && j; j = j->next) {
                j->rc = j->rc ? j->rc : rc;
            }
            finish_jobs(s, p->jobs);
            s->sync_inflight--;
            free(p);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

size_t mt_txn_job_bytes(const mt_txn *t)
{
    const mt_store *s = t->s;
    return s->wal && s->redo.len > s->job_redo ? s->redo.len - s->job_redo : 0;
}

uint64_t mt_txn_job_max(const mt_txn *t)
{
    return t->s->wal ? t->s->job_redo_max : UINT64_MAX;
}

/* ---- the writer ---- */

/*
 * Runs 'first' in a nested transaction of its own or, with 'share', with the
 * repeatable jobs after it (SHARED_MAX_JOBS at most) in one: a nested
 * transaction copies every page it touches, and consecutive appends touch
 * the same pages (the log's last page, the heads). Sharing stops after the
 * job that takes the group's redo past 'budget'. A job whose own redo
 * exceeds 'one_max' could never fit the write-ahead file and fails with
 * MT_ETOOBIG. On success, sets *last to the last job run; on the first
 * error, returns it with every job of the transaction undone.
 */
static mt_err run_nested(mt_store *s, MDB_txn *parent, job *first, bool share, uint64_t budget,
                         uint64_t one_max, job **last)
{
    *last = first;
    MDB_txn *child;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, parent, 0, &child), "nested begin");
    if (rc) {
        return rc;
    }
    s->nested++;
    size_t mark = s->redo.len;
    uint64_t writes = s->writes;
    mt_txn t = {.s = s, .txn = child, .write = true};
    int n = 0;
    for (job *j = first; rc == MT_OK && j; j = j->next) {
        size_t before = s->redo.len;
        s->job_redo = before;
        s->job_redo_max = one_max;
        rc = j->run(&t, j->arg);
        if (rc == MT_OK && t.poisoned) {
            rc = t.poisoned;
        }
        if (rc == MT_OK && s->redo.len - before > one_max) {
            mt_error("store: one write of %zu bytes does not fit the write-ahead file "
                     "(engine.wal_size); refused", s->redo.len - before);
            rc = MT_ETOOBIG;
        }
        *last = j;
        if (!share || ++n == SHARED_MAX_JOBS || !j->next || !j->next->repeatable ||
            s->redo.len > budget) {
            break;
        }
    }
    if (rc == MT_OK) {
        rc = map_mdb(mdb_txn_commit(child), "nested commit");
    } else {
        mdb_txn_abort(child);
    }
    if (rc) {
        s->redo.len = mark;
        s->writes = writes;
    }
    return rc;
}

/*
 * Appends the group's record to the write-ahead file. When the ring is full
 * up to the last checkpoint's position, the writer waits for a checkpoint:
 * the one in progress, else one it starts now at the write position (after
 * leaving the rest of the lap unused if everything is checkpointed and the
 * record still does not fit where the head is: it then fits at the front).
 * The wait lasts one or two checkpoints (a sync of what LMDB has not yet
 * written) and is logged. A failed checkpoint fails the group.
 */
static mt_err wal_append(mt_store *s, uint64_t group)
{
    int64_t t0 = 0;
    mt_err rc;
    for (int round = 0;; round++) {
        rc = mt_wal_append(s->wal, group, s->redo.data, s->redo.len);
        if (rc != MT_EFULL || round == 4) {
            break;
        }
        if (!t0) {
            t0 = mt_mono_us();
        }
        if (!s->ckpt_pending) {
            if (mt_wal_used(s->wal) == 0) {
                mt_wal_skip(s->wal);
            }
            rc = ckpt_start(s);
            if (rc) {
                break;
            }
        }
        rc = ckpt_wait(s);
        if (rc) {
            break;
        }
    }
    if (t0) {
        mt_warn("store: the write-ahead file was full: group %llu of %zu bytes waited %.1f ms "
                "for a checkpoint (engine.wal_size is small for this load)",
                (unsigned long long) group, s->redo.len, (double) (mt_mono_us() - t0) / 1000.0);
    }
    return rc;
}

/*
 * Runs a group of jobs in one transaction and makes it durable. A group's
 * redo record must fit the write-ahead file: once the group's redo passes
 * half of it, the jobs not yet run are cut off and returned (the caller
 * queues them again, first); a job whose own redo could never fit fails
 * alone with MT_ETOOBIG.
 */
static job *run_group(mt_store *s, job *jobs)
{
    s->group_t0 = mt_mono_us();
    s->cut_for_publishes = false;
    MDB_txn *parent;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &parent), "group begin");
    if (rc) {
        for (job *j = jobs; j; j = j->next) {
            j->rc = rc;
        }
        return NULL;
    }
    s->redo.len = 0;
    s->writes = 0;
    int ok = 0;
    uint64_t budget = s->wal ? mt_wal_capacity(s->wal) / 2 : UINT64_MAX;
    uint64_t one_max = s->wal ? mt_wal_capacity(s->wal) - 64 : UINT64_MAX;
    job *rest = NULL;
    bool alone = false;      /* sharing failed: one by one up to 'alone_until' */
    job *alone_until = NULL; /* the job after the one that failed (NULL: the end) */
    for (job *j = jobs; j; j = j->next) {
        if (alone && j == alone_until) {
            alone = false;
        }
        bool share = !alone && j->repeatable && j->next && j->next->repeatable;
        job *last;
        rc = run_nested(s, parent, j, share, budget, one_max, &last);
        if (rc && share) {
            /*
             * All of them were undone: up to the one that failed, each runs
             * again in its own, so that one fails alone; sharing resumes after it.
             */
            alone = true;
            alone_until = last->next;
            rc = run_nested(s, parent, j, false, budget, one_max, &last);
        }
        for (job *k = j;; k = k->next) {
            k->rc = rc;
            ok += rc == MT_OK;
            if (k == last) {
                break;
            }
        }
        j = last;
        if (j->next && s->redo.len > budget) {
            rest = j->next;
            j->next = NULL;
            break;
        }
        if (j->next && atomic_load_explicit(&s->queued_repeatable, memory_order_relaxed) > 0 &&
            mt_mono_us() - s->group_t0 >= GROUP_CUT_US) {
            /* Publishes wait: the group ends here, the rest goes on after them. */
            rest = j->next;
            j->next = NULL;
            s->cut_for_publishes = true;
            break;
        }
    }
    if (ok == 0 || s->writes == 0) {
        /* Nothing to make durable (failures, or reads such as duplicates). */
        mdb_txn_abort(parent);
        return rest;
    }
    uint64_t group = s->group + 1;
    rc = put_group_id(s, parent, group);
    if (rc == MT_OK && s->wal) {
        rc = wal_append(s, group);
        /* Synced by the sync thread, while the writer goes on (hand_to_sync). */
        if (rc == MT_ETOOBIG) {
            mt_error("store: a group of %zu bytes does not fit the write-ahead file",
                     s->redo.len);
        }
    }
    if (rc == MT_OK) {
        rc = commit_txn(s, parent, "group commit");
        if (rc && s->wal) {
            /* The record must not be replayed: its group did not happen. */
            mt_wal_undo_last(s->wal);
        }
    } else {
        mdb_txn_abort(parent);
    }
    if (rc == MT_OK) {
        s->group = group;
        s->dirty = true;
    }
    if (s->redo.cap > REDO_KEEP) {
        /* A large group's record (a purge of a million dead letters: 30 MB) is not kept for ever. */
        mt_buf_free(&s->redo);
        mt_buf_init(&s->redo);
    }
    for (job *j = jobs; j; j = j->next) {
        if (j->rc == MT_OK) {
            j->rc = rc;
        }
    }
    return rest;
}

/*
 * Writer thread, mu held. A checkpoint starts when asked for, or after
 * commits when a quarter of the write-ahead ring is in use (the rest takes
 * the groups that arrive while it is made), when LMDB's file has grown by
 * the growth limit, or 1 s after the last one (30 s without a write-ahead
 * file); never while one is pending.
 *
 * Why 1 s: while a checkpoint's pin holds, LMDB takes the pages it writes
 * from those freed before the pin, then from the end of its file. An
 * interval that writes more than the one before it freed grows the file,
 * and the growth limit alone let every interval grow it by the whole limit
 * (32 MiB every few seconds at 1,000 single-event publishes a second,
 * without end: each interval then wrote more than the last one had freed).
 * Intervals of equal length write about what the one before freed, so the
 * file levels off at about two intervals' worth of written pages.
 */
static bool checkpoint_due(mt_store *s)
{
    if (s->ckpt_pending) {
        return false;
    }
    if (s->ckpt_asked) {
        return true;
    }
    if (!s->dirty || mt_mono_us() < s->ckpt_retry_us) {
        return false;
    }
    if (s->wal && mt_wal_used(s->wal) > mt_wal_capacity(s->wal) / 4) {
        return true;
    }
    if (s->wal) {
        /* Pages freed since the pin cannot be reused: bound the file's growth. */
        MDB_envinfo info;
        mdb_env_info(s->env, &info);
        if ((uint64_t) (info.me_last_pgno - s->ckpt_pgno) * s->psize > s->growth_limit) {
            return true;
        }
    }
    return mt_mono_us() - s->last_checkpoint_us >= s->ckpt_interval_us;
}

/* A list of jobs being built. */
typedef struct job_list {
    job *head, *tail;
} job_list;

static void list_add(job_list *l, job *j)
{
    j->next = NULL;
    if (l->tail) {
        l->tail->next = j;
    } else {
        l->head = j;
    }
    l->tail = j;
}

static void list_join(job_list *l, const job_list *more)
{
    if (!more->head) {
        return;
    }
    if (l->tail) {
        l->tail->next = more->head;
    } else {
        l->head = more->head;
    }
    l->tail = more->tail;
}

/*
 * mu held. Puts the jobs cut off a group ('rest') back before the queue.
 * If they were cut off for the publishes waiting, every repeatable job
 * (publish) goes first, then the others: a publish then waits for at most
 * one long job. Repeatable jobs keep their order, and so do the others.
 */
static void requeue(mt_store *s, job *rest, bool publishes_first)
{
    job_list pub = {NULL, NULL}, other = {NULL, NULL}, queued = {NULL, NULL};
    int back = 0;
    for (job *j = rest, *next; j; j = next) {
        next = j->next;
        back += j->repeatable;
        list_add(publishes_first && j->repeatable ? &pub : &other, j);
    }
    atomic_fetch_add_explicit(&s->queued_repeatable, back, memory_order_relaxed);
    for (job *j = s->queue, *next; j; j = next) {
        next = j->next;
        list_add(publishes_first && j->repeatable ? &pub : &queued, j);
    }
    list_join(&pub, &other);
    list_join(&pub, &queued);
    s->queue = pub.head;
    s->queue_tail = pub.tail;
}

static void *writer_main(void *arg)
{
    mt_store *s = arg;
    pthread_setname_np(pthread_self(), "writer");
    pthread_mutex_lock(&s->mu);
    for (;;) {
        ckpt_observe(s);
        while (!s->queue && !s->closing && !checkpoint_due(s)) {
            s->sleeping = true;
            if (s->dirty || s->ckpt_pending || s->ckpt_asked) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += 1;
                pthread_cond_timedwait(&s->work_cv, &s->mu, &ts);
            } else {
                pthread_cond_wait(&s->work_cv, &s->mu);
            }
            s->sleeping = false;
            ckpt_observe(s);
        }
        if (!s->queue && s->closing) {
            break;
        }
        /* Take up to GROUP_MAX_JOBS jobs as one group. */
        job *jobs = s->queue;
        job *last = jobs;
        int n = jobs ? 1 : 0;
        int taken_repeatable = jobs && jobs->repeatable;
        while (last && last->next && n < GROUP_MAX_JOBS) {
            last = last->next;
            n++;
            taken_repeatable += last->repeatable;
        }
        atomic_fetch_sub_explicit(&s->queued_repeatable, taken_repeatable, memory_order_relaxed);
        if (jobs) {
            s->queue = last->next;
            if (!s->queue) {
                s->queue_tail = NULL;
            }
            last->next = NULL;
        }
        mt_err failed = s->failed;
        pthread_mutex_unlock(&s->mu);

        uint64_t before = s->group;
        job *rest = NULL;
        if (jobs && failed) {
            for (job *j = jobs; j; j = j->next) {
                j->rc = failed;
            }
        } else if (jobs) {
            rest = run_group(s, jobs);
        }
        pthread_mutex_lock(&s->mu);
        /* Counted before its jobs are finished, so a caller that was answered sees the group. */
        s->stats.groups += jobs != NULL;
        s->stats.nested = s->nested;
        ckpt_observe(s);
        bool due = checkpoint_due(s);
        pthread_mutex_unlock(&s->mu);
        if (due) {
            /* Handed to the checkpoint thread: the next group does not wait for it. */
            ckpt_start(s);
        }

        if (jobs && s->wal) {
            hand_to_sync(s, jobs, s->group != before ? s->group : 0);
        }
        pthread_mutex_lock(&s->mu);
        if (rest) {
            requeue(s, rest, s->cut_for_publishes);
        }
        if (jobs && !s->wal) {
            finish_jobs(s, jobs);
        }
    }
    bool asked = s->ckpt_asked;
    pthread_mutex_unlock(&s->mu);
    /* The final checkpoint, after the one in progress. */
    mt_err rc = ckpt_wait(s);
    if (s->dirty || asked) {
        rc = ckpt_start(s);
        if (rc == MT_OK) {
            rc = ckpt_wait(s);
        }
    }
    if (rc) {
        mt_error("store: final checkpoint failed; the write-ahead file keeps the data");
    }
    return NULL;
}

static mt_err enqueue(mt_store *s, job *j)
{
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return MT_ECLOSED;
    }
    if (s->queue_tail) {
        s->queue_tail->next = j;
    } else {
        s->queue = j;
    }
    s->queue_tail = j;
    if (j->repeatable) {
        atomic_fetch_add_explicit(&s->queued_repeatable, 1, memory_order_relaxed);
    }
    if (s->sleeping) {
        pthread_cond_signal(&s->work_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return MT_OK;
}

static mt_err submit(mt_store *s, mt_store_job_fn run, mt_store_done_fn done, void *arg,
                     bool repeatable)
{
    job *j = mt_xcalloc(1, sizeof *j);
    j->run = run;
    j->done = done;
    j->arg = arg;
    j->repeatable = repeatable;
    mt_err rc = enqueue(s, j);
    if (rc) {
        free(j);
    }
    return rc;
}

mt_err mt_store_submit(mt_store *s, mt_store_job_fn run, mt_store_done_fn done, void *arg)
{
    return submit(s, run, done, arg, false);
}

mt_err mt_store_submit_repeatable(mt_store *s, mt_store_job_fn run, mt_store_done_fn done,
                                  void *arg)
{
    return submit(s, run, done, arg, true);
}

mt_err mt_store_write(mt_store *s, mt_store_job_fn run, void *arg)
{
    job j = {.run = run, .arg = arg, .sync = true};
    mt_err rc = enqueue(s, &j);
    if (rc) {
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    while (!j.finished) {
        pthread_cond_wait(&s->sync_cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return j.rc;
}

void mt_store_set_notify(mt_store *s, void (*notify)(void *arg), void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->notify = notify;
    s->notify_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

void mt_store_complete(mt_store *s)
{
    pthread_mutex_lock(&s->mu);
    job *list = s->done;
    s->done = s->done_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    for (job *j = list, *next; j; j = next) {
        next = j->next;
        if (j->done) {
            j->done(j->rc, j->arg);
        }
        free(j);
    }
}

/* ---- transactions ---- */

mt_err mt_store_read_begin_latest(mt_store *s, mt_txn **out)
{
    *out = NULL;
    mt_txn *t = mt_xcalloc(1, sizeof *t);
    t->s = s;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t->txn), "read begin");
    if (rc) {
        free(t);
        return rc;
    }
    *out = t;
    return MT_OK;
}

mt_err mt_store_read_renew(mt_store *s, mt_txn **t)
{
    if (!*t) {
        return mt_store_read_begin_latest(s, t);
    }
    mt_assert(!(*t)->sn && !(*t)->write);
    mt_err rc = map_mdb(mdb_txn_renew((*t)->txn), "read renew");
    if (rc) {
        mt_store_read_end(*t);
        *t = NULL;
    }
    return rc;
}

void mt_store_read_pause(mt_txn *t)
{
    mt_assert(!t->sn && !t->write);
    mdb_txn_reset(t->txn);
}

mt_err mt_store_read_begin(mt_store *s, mt_txn **out)
{
    if (!s->wal) {
        return mt_store_read_begin_latest(s, out);
    }
    mt_txn *t = mt_xcalloc(1, sizeof *t);
    t->s = s;
    pthread_mutex_lock(&s->mu);
    t->sn = s->durable;
    t->sn->refs++;
    pthread_mutex_unlock(&s->mu);
    t->txn = t->sn->txn;
    *out = t;
    return MT_OK;
}

void mt_store_read_end(mt_txn *t)
{
    if (!t) {
        return;
    }
    mt_assert(!t->write);
    if (t->sn) {
        pthread_mutex_lock(&t->s->mu);
        snap_unref(t->s, t->sn);
        pthread_mutex_unlock(&t->s->mu);
    } else {
        mdb_txn_abort(t->txn);
    }
    free(t);
}

mt_err mt_store_get(mt_txn *t, mt_db db, const void *key, size_t klen, const void **val,
                    size_t *vlen)
{
    *val = NULL;
    *vlen = 0;
    mt_assert(db < MT_DB_COUNT);
    if (t->poisoned) {
        return t->poisoned;
    }
    MDB_val k = {klen, (void *) key}, v;
    int rc = mdb_get(t->txn, t->s->dbi[db], &k, &v);
    if (rc) {
        return map_mdb(rc, "get");
    }
    *val = v.mv_data;
    *vlen = v.mv_size;
    return MT_OK;
}

static void redo_add(mt_store *s, uint8_t op, mt_db db, const void *key, size_t klen,
                     const void *val, size_t vlen)
{
    s->writes++;
    if (!s->wal) {
        return;
    }
    uint8_t h[12] = {op, (uint8_t) db, 0, 0};
    uint32_t kl = (uint32_t) klen, vl = (uint32_t) vlen;
    memcpy(h + 4, &kl, 4);
    memcpy(h + 8, &vl, 4);
    mt_buf_add(&s->redo, h, sizeof h);
    mt_buf_add(&s->redo, key, klen);
    mt_buf_add(&s->redo, val, vlen);
}

/*
 * Puts key -> v with LMDB's 'flags', through cursor 'c' when not NULL:
 * poisons the transaction on an error, records the redo when written.
 * MT_EEXISTS for MDB_NOOVERWRITE on a key that is there: nothing written,
 * v then points at the value there.
 */
static mt_err put_mdb(mt_txn *t, MDB_cursor *c, mt_db db, const void *key, size_t klen,
                      MDB_val *v, unsigned flags)
{
    mt_assert(t->write && db < MT_DB_COUNT);
    if (t->poisoned) {
        return t->poisoned;
    }
    MDB_val k = {klen, (void *) key};
    const void *val = v->mv_data;
    size_t vlen = v->mv_size;
    int rc = c ? mdb_cursor_put(c, &k, v, flags) : mdb_put(t->txn, t->s->dbi[db], &k, v, flags);
    if (rc == MDB_KEYEXIST) {
        return MT_EEXISTS;
    }
    if (rc) {
        t->poisoned = map_mdb(rc, db_names[db]);
        return t->poisoned;
    }
    redo_add(t->s, REDO_PUT, db, key, klen, val, vlen);
    return MT_OK;
}

mt_err mt_store_put(mt_txn *t, mt_db db, const void *key, size_t klen, const void *val,
                    size_t vlen, unsigned flags)
{
    MDB_val v = {vlen, (void *) val};
    return put_mdb(t, NULL, db, key, klen, &v, (flags & MT_STORE_APPEND) ? MDB_APPEND : 0);
}

mt_err mt_store_put_new(mt_txn *t, mt_db db, const void *key, size_t klen, const void *val,
                        size_t vlen, const void **old, size_t *oldlen)
{
    MDB_val v = {vlen, (void *) val};
    mt_err rc = put_mdb(t, NULL, db, key, klen, &v, MDB_NOOVERWRITE);
    *old = rc == MT_EEXISTS ? v.mv_data : NULL;
    *oldlen = rc == MT_EEXISTS ? v.mv_size : 0;
    return rc;
}

mt_err mt_store_savepoint(mt_txn *t, mt_txn **out)
{
    *out = NULL;
    mt_assert(t->write);
    if (t->poisoned) {
        return t->poisoned;
    }
    MDB_txn *child;
    mt_err rc = map_mdb(mdb_txn_begin(t->s->env, t->txn, 0, &child), "savepoint");
    if (rc) {
        return rc;
    }
    mt_txn *sp = mt_xcalloc(1, sizeof *sp);
    sp->s = t->s;
    sp->txn = child;
    sp->write = true;
    sp->parent = t;
    sp->redo_mark = t->s->redo.len;
    sp->writes_mark = t->s->writes;
    *out = sp;
    return MT_OK;
}

mt_err mt_store_savepoint_release(mt_txn *sp)
{
    mt_assert(sp->parent);
    mt_err rc = sp->poisoned;
    if (rc == MT_OK) {
        rc = map_mdb(mdb_txn_commit(sp->txn), "savepoint release");
    } else {
        mdb_txn_abort(sp->txn);
    }
    if (rc) {
        sp->s->redo.len = sp->redo_mark;
        sp->s->writes = sp->writes_mark;
    }
    free(sp);
    return rc;
}

void mt_store_savepoint_rollback(mt_txn *sp)
{
    mt_assert(sp->parent);
    mdb_txn_abort(sp->txn);
    sp->s->redo.len = sp->redo_mark;
    sp->s->writes = sp->writes_mark;
    free(sp);
}

mt_err mt_store_del(mt_txn *t, mt_db db, const void *key, size_t klen)
{
    mt_assert(t->write && db < MT_DB_COUNT);
    if (t->poisoned) {
        return t->poisoned;
    }
    MDB_val k = {klen, (void *) key};
    int rc = mdb_del(t->txn, t->s->dbi[db], &k, NULL);
    if (rc == MDB_NOTFOUND) {
        return MT_ENOTFOUND;
    }
    if (rc) {
        t->poisoned = map_mdb(rc, db_names[db]);
        return t->poisoned;
    }
    redo_add(t->s, REDO_DEL, db, key, klen, NULL, 0);
    return MT_OK;
}

/* ---- cursors ---- */

mt_err mt_store_cursor_open(mt_txn *t, mt_db db, mt_cursor **out)
{
    *out = NULL;
    mt_assert(db < MT_DB_COUNT);
    mt_cursor *c = mt_xcalloc(1, sizeof *c);
    c->t = t;
    c->db = db;
    mt_err rc = map_mdb(mdb_cursor_open(t->txn, t->s->dbi[db], &c->c), "cursor open");
    if (rc) {
        free(c);
        return rc;
    }
    *out = c;
    return MT_OK;
}

void mt_store_cursor_close(mt_cursor *c)
{
    if (!c) {
        return;
    }
    mdb_cursor_close(c->c);
    free(c);
}

static mt_err cursor_op(mt_cursor *c, MDB_val *key, MDB_cursor_op op, const void **k,
                        size_t *kl, const void **v, size_t *vl)
{
    MDB_val mk = {0, NULL}, mv = {0, NULL};
    if (key) {
        mk = *key;
    }
    int rc = mdb_cursor_get(c->c, &mk, &mv, op);
    if (rc) {
        *k = *v = NULL;
        *kl = *vl = 0;
        return map_mdb(rc, "cursor");
    }
    *k = mk.mv_data;
    *kl = mk.mv_size;
    *v = mv.mv_data;
    *vl = mv.mv_size;
    return MT_OK;
}

mt_err mt_store_cursor_seek(mt_cursor *c, const void *key, size_t klen, const void **k,
                            size_t *kl, const void **v, size_t *vl)
{
    if (klen == 0) {
        return cursor_op(c, NULL, MDB_FIRST, k, kl, v, vl);
    }
    MDB_val mk = {klen, (void *) key};
    return cursor_op(c, &mk, MDB_SET_RANGE, k, kl, v, vl);
}

mt_err mt_store_cursor_find(mt_cursor *c, const void *key, size_t klen, const void **v,
                            size_t *vl)
{
    MDB_val mk = {klen, (void *) key}, mv = {0, NULL};
    int rc = mdb_cursor_get(c->c, &mk, &mv, MDB_SET_KEY);
    *v = rc ? NULL : mv.mv_data;
    *vl = rc ? 0 : mv.mv_size;
    return rc ? map_mdb(rc, "cursor") : MT_OK;
}

mt_err mt_store_cursor_put(mt_cursor *c, const void *key, size_t klen, const void *val,
                           size_t vlen, unsigned flags)
{
    MDB_val v = {vlen, (void *) val};
    return put_mdb(c->t, c->c, c->db, key, klen, &v, (flags & MT_STORE_CURRENT) ? MDB_CURRENT : 0);
}

mt_err mt_store_cursor_last(mt_cursor *c, const void **k, size_t *kl, const void **v,
                            size_t *vl)
{
    return cursor_op(c, NULL, MDB_LAST, k, kl, v, vl);
}

mt_err mt_store_cursor_next(mt_cursor *c, const void **k, size_t *kl, const void **v,
                            size_t *vl)
{
    return cursor_op(c, NULL, MDB_NEXT, k, kl, v, vl);
}

mt_err mt_store_cursor_prev(mt_cursor *c, const void **k, size_t *kl, const void **v,
                            size_t *vl)
{
    return cursor_op(c, NULL, MDB_PREV, k, kl, v, vl);
}

mt_err mt_store_first_with_prefix(mt_txn *t, mt_db db, const void *key, size_t klen,
                                  size_t plen, const void **k, size_t *kl, const void **v,
                                  size_t *vl)
{
    mt_assert(plen <= klen);
    mt_cursor *c;
    mt_err rc = mt_store_cursor_open(t, db, &c);
    if (rc) {
        *k = *v = NULL;
        *kl = *vl = 0;
        return rc;
    }
    rc = mt_store_cursor_seek(c, key, klen, k, kl, v, vl);
    mt_store_cursor_close(c);
    if (rc == MT_OK && (*kl < plen || memcmp(*k, key, plen) != 0)) {
        *k = *v = NULL;
        *kl = *vl = 0;
        rc = MT_ENOTFOUND;
    }
    return rc;
}

/* ---- checkpoints on request ---- */

mt_err mt_store_checkpoint(mt_store *s, bool wait)
{
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return MT_ECLOSED;
    }
    /* The next checkpoint to start covers every group committed before this call. */
    uint64_t want = s->ckpt_started_n + 1;
    s->ckpt_asked = true;
    if (s->sleeping) {
        pthread_cond_signal(&s->work_cv);
    }
    mt_err rc = MT_OK;
    if (wait) {
        while (s->ckpt_done_n < want) {
            pthread_cond_wait(&s->ckpt_done_cv, &s->mu);
        }
        rc = s->ckpt_rc;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void mt_store_set_checkpoint_hook(mt_store *s, mt_store_ckpt_hook hook, void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->ckpt_hook = hook;
    s->ckpt_hook_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

void mt_store_set_sync_hook(mt_store *s, mt_store_sync_hook hook, void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->sync_hook = hook;
    s->sync_hook_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

/* ---- introspection ---- */

void mt_store_get_stats(mt_store *s, mt_store_stats *st)
{
    MDB_envinfo info;
    MDB_stat ms;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &ms);
    pthread_mutex_lock(&s->mu);
    *st = s->stats;
    pthread_mutex_unlock(&s->mu);
    st->map_size = info.me_mapsize;
    st->map_used = ((uint64_t) info.me_last_pgno + 1) * ms.ms_psize;
}

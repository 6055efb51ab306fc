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
#include <time.h>
#include <unistd.h>
#include "mt_diag.h"
#include "mt_mem.h"
#include "mt_store.h"
#include "mt_util.h"
#include "mt_wal.h"

#define CHECKPOINT_INTERVAL_US (30 * 1000000LL)
#define GROUP_MAX_JOBS 4096

static const char *const db_names[MT_DB_COUNT] = {
    "meta", "log", "streams", "heads", "ids", "subs", "parked", "sched", "dlq", "kv", "subdefs",
};

typedef struct job {
    mt_store_job_fn run;
    mt_store_done_fn done;
    void *arg;
    mt_err rc;
    bool sync;          /* a mt_store_write() caller waits on it */
    bool finished;
    struct job *next;
} job;

struct mt_store {
    MDB_env *env;
    MDB_dbi dbi[MT_DB_COUNT];
    mt_wal *wal;               /* NULL when nosync */
    MDB_txn *pin;              /* read txn holding the last checkpoint's pages (fsync only) */
    unsigned psize;            /* LMDB page size */
    uint64_t growth_limit;     /* bytes LMDB may grow between checkpoints (pinned pages) */
    uint64_t ckpt_pgno;        /* LMDB's last page number at the last checkpoint */
    char *dir;                 /* owned */
    int lock_fd;               /* flock'ed: one engine per data directory */

    pthread_t writer;
    bool writer_started;
    pthread_mutex_t mu;        /* guards everything below */
    pthread_cond_t work_cv;    /* jobs queued, or closing */
    pthread_cond_t sync_cv;    /* a synchronous job finished */
    job *queue, *queue_tail;
    job *done, *done_tail;
    bool closing;
    bool sleeping;             /* the writer waits on work_cv: enqueue must signal */
    void (*notify)(void *);
    void *notify_arg;
    mt_store_stats stats;

    /* writer thread only */
    mt_buf redo;               /* the current group's redo operations (fsync durability) */
    uint64_t writes;           /* puts and deletes in the current group */
    uint64_t group;            /* last group id committed */
    int64_t last_checkpoint_us;
    bool dirty;                /* commits since the last checkpoint */
};

struct mt_txn {
    mt_store *s;
    MDB_txn *txn;
    bool write;
    mt_err poisoned;           /* first error; every later write call fails with it */
    mt_txn *parent;            /* for a savepoint: the transaction it belongs to */
    size_t redo_mark;          /* for a savepoint: redo length when it began */
    uint64_t writes_mark;      /* for a savepoint: write count when it began */
};

struct mt_cursor {
    MDB_cursor *c;
};

enum { REDO_PUT = 1, REDO_DEL = 2 };

static mt_err map_mdb(int rc, const char *what)
{
    if (rc == MDB_SUCCESS) {
        return MT_OK;
    }
    if (rc == MDB_NOTFOUND) {
        return MT_ENOTFOUND;
    }
    if (rc == MDB_MAP_FULL) {
        return MT_EFULL;
    }
    if (rc == ENOSPC) {
        mt_error("store: %s failed: no space left on device", what);
        return MT_EFULL;
    }
    mt_error("store: %s failed: %s", what, mdb_strerror(rc));
    return MT_EIO;
}

/* ---- open and close ---- */

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
    rc = map_mdb(mdb_txn_commit(txn), "replay commit");
    if (rc == MT_OK) {
        r->applied = group;
        r->replayed++;
    }
    return rc;
}

/* Reads LMDB's two meta pages (pages 0 and 1 of data.mdb) into a new buffer. */
static mt_err read_meta_pages(mt_store *s, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    char *path = mt_xasprintf("%s/data.mdb", s->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    size_t n = 2 * (size_t) s->psize;
    uint8_t *buf = mt_xmalloc(n);
    ssize_t got = fd >= 0 ? pread(fd, buf, n, 0) : -1;
    if (fd >= 0) {
        close(fd);
    }
    if (got != (ssize_t) n) {
        mt_error("store: cannot read the meta pages of '%s/data.mdb'", s->dir);
        free(buf);
        return MT_EIO;
    }
    *out = buf;
    *len = n;
    return MT_OK;
}

/*
 * Makes everything committed durable in LMDB and starts a new write-ahead
 * generation. With the write-ahead file, the new generation saves LMDB's
 * meta pages as they are now (the checkpoint snapshot) and a read
 * transaction is pinned at this state, so LMDB never reuses the pages the
 * snapshot refers to until the next checkpoint: whatever happens to the
 * unsynced pages written after it, the snapshot's tree is intact on disk.
 */
static mt_err checkpoint(mt_store *s)
{
    mt_err rc = map_mdb(mdb_env_sync(s->env, 1), "checkpoint sync");
    if (rc == MT_OK && s->wal) {
        uint8_t *meta;
        size_t len;
        rc = read_meta_pages(s, &meta, &len);
        if (rc == MT_OK) {
            rc = mt_wal_reset(s->wal, meta, len);
            free(meta);
        }
        if (rc == MT_OK) {
            /* Only now may the previous snapshot's pages be reused. */
            if (s->pin) {
                mdb_txn_reset(s->pin);
                rc = map_mdb(mdb_txn_renew(s->pin), "pin checkpoint");
            } else {
                rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->pin), "pin checkpoint");
            }
        }
    }
    if (rc == MT_OK) {
        MDB_envinfo info;
        mdb_env_info(s->env, &info);
        s->ckpt_pgno = info.me_last_pgno;
        s->last_checkpoint_us = mt_mono_us();
        s->dirty = false;
        pthread_mutex_lock(&s->mu);
        s->stats.checkpoints++;
        pthread_mutex_unlock(&s->mu);
    }
    return rc;
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
    if (fd < 0) {
        mt_error("store: '%s' is missing but the write-ahead file has a checkpoint: "
                 "refusing to start on a partial data directory", path);
        rc = MT_EIO;
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

static mt_err recover(mt_store *s)
{
    MDB_txn *txn;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "recovery begin");
    if (rc) {
        return rc;
    }
    MDB_val k = {9, "wal.group"}, v;
    replay_state r = {s, 0, 0};
    if (mdb_get(txn, s->dbi[MT_DB_META], &k, &v) == MDB_SUCCESS && v.mv_size == 8) {
        r.applied = mt_get_be64(v.mv_data);
    }
    mdb_txn_abort(txn);
    if (s->wal) {
        rc = mt_wal_replay(s->wal, replay_group, &r);
        if (rc) {
            return rc;
        }
        if (r.replayed) {
            mt_info("store: replayed %llu group(s) from the write-ahead file",
                    (unsigned long long) r.replayed);
        }
    }
    s->group = r.applied;
    return checkpoint(s);
}

static void *writer_main(void *arg);

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
    mt_buf_init(&s->redo);

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
        rc = recover(s);
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
        mt_store_complete(s);
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
    free(s->dir);
    free(s);
}

/* ---- the writer ---- */

static mt_err run_job(mt_store *s, MDB_txn *parent, job *j)
{
    MDB_txn *child;
    mt_err rc = map_mdb(mdb_txn_begin(s->env, parent, 0, &child), "nested begin");
    if (rc) {
        return rc;
    }
    size_t mark = s->redo.len;
    uint64_t writes = s->writes;
    mt_txn t = {s, child, true, MT_OK, NULL, 0, 0};
    rc = j->run(&t, j->arg);
    if (rc == MT_OK && t.poisoned) {
        rc = t.poisoned;
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
 * Runs a group of jobs in one transaction and makes it durable. A group's
 * redo record must fit the write-ahead file: once the group's redo passes
 * half of it, the jobs not yet run are cut off and returned (the caller
 * queues them again, first); a job whose own redo could never fit fails
 * alone with MT_ETOOBIG.
 */
static job *run_group(mt_store *s, job **list)
{
    job *jobs = *list;
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
    for (job *j = jobs; j; j = j->next) {
        size_t before = s->redo.len;
        j->rc = run_job(s, parent, j);
        if (j->rc == MT_OK && s->redo.len - before > one_max) {
            /* Too big for the write-ahead file on its own: refuse just this job. */
            mt_error("store: one write of %zu bytes does not fit the write-ahead file "
                     "(engine.wal_size); refused", s->redo.len - before);
            mdb_txn_abort(parent);
            j->rc = MT_ETOOBIG;
            /* Run the others again without it: their effects were undone with the group. */
            job *others = NULL, **tail = &others;
            for (job *k = jobs, *nx; k; k = nx) {
                nx = k->next;
                if (k != j) {
                    *tail = k;
                    tail = &k->next;
                }
            }
            *tail = NULL;
            j->next = NULL;
            job *left = NULL;
            if (others) {
                left = run_group(s, &others);
                job *end = others;
                while (end->next) {
                    end = end->next;
                }
                end->next = j;
                *list = others;
            } else {
                *list = j;
            }
            return left;
        }
        ok += j->rc == MT_OK;
        if (j->next && s->redo.len > budget) {
            rest = j->next;
            j->next = NULL;
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
        rc = mt_wal_append(s->wal, group, s->redo.data, s->redo.len);
        if (rc == MT_EFULL) {
            /* Everything committed so far becomes durable in LMDB; start over. */
            rc = checkpoint(s);
            if (rc == MT_OK) {
                rc = mt_wal_append(s->wal, group, s->redo.data, s->redo.len);
            }
        }
        if (rc == MT_OK) {
            rc = mt_wal_sync(s->wal);
        }
        if (rc == MT_ETOOBIG) {
            mt_error("store: a group of %zu bytes does not fit the write-ahead file",
                     s->redo.len);
        }
    }
    if (rc == MT_OK) {
        rc = map_mdb(mdb_txn_commit(parent), "group commit");
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
    for (job *j = jobs; j; j = j->next) {
        if (j->rc == MT_OK) {
            j->rc = rc;
        }
    }
    return rest;
}

static bool checkpoint_due(mt_store *s)
{
    if (!s->dirty) {
        return false;
    }
    if (s->wal && mt_wal_used(s->wal) > mt_wal_capacity(s->wal) / 2) {
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
    return mt_mono_us() - s->last_checkpoint_us >= CHECKPOINT_INTERVAL_US;
}

static void *writer_main(void *arg)
{
    mt_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->queue && !s->closing) {
            s->sleeping = true;
            if (s->dirty) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += 1;
                pthread_cond_timedwait(&s->work_cv, &s->mu, &ts);
            } else {
                pthread_cond_wait(&s->work_cv, &s->mu);
            }
            s->sleeping = false;
            if (!s->queue && s->dirty && checkpoint_due(s)) {
                break;
            }
        }
        s->sleeping = false;
        if (!s->queue && s->closing) {
            break;
        }
        /* Take up to GROUP_MAX_JOBS jobs as one group. */
        job *jobs = s->queue;
        job *last = jobs;
        int n = jobs ? 1 : 0;
        while (last && last->next && n < GROUP_MAX_JOBS) {
            last = last->next;
            n++;
        }
        if (jobs) {
            s->queue = last->next;
            if (!s->queue) {
                s->queue_tail = NULL;
            }
            last->next = NULL;
        }
        pthread_mutex_unlock(&s->mu);

        job *rest = jobs ? run_group(s, &jobs) : NULL;
        if (checkpoint_due(s)) {
            if (checkpoint(s)) {
                mt_error("store: checkpoint failed; the write-ahead file keeps the data");
            }
        }

        pthread_mutex_lock(&s->mu);
        if (rest) {
            /* Jobs cut off a full group go first in the next one. */
            job *end = rest;
            while (end->next) {
                end = end->next;
            }
            end->next = s->queue;
            s->queue = rest;
            if (!s->queue_tail) {
                s->queue_tail = end;
            }
        }
        bool wake = false;
        s->stats.groups += jobs != NULL;
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
    pthread_mutex_unlock(&s->mu);
    if (s->dirty && checkpoint(s)) {
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
    if (s->sleeping) {
        pthread_cond_signal(&s->work_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return MT_OK;
}

mt_err mt_store_submit(mt_store *s, mt_store_job_fn run, mt_store_done_fn done, void *arg)
{
    job *j = mt_xcalloc(1, sizeof *j);
    j->run = run;
    j->done = done;
    j->arg = arg;
    mt_err rc = enqueue(s, j);
    if (rc) {
        free(j);
    }
    return rc;
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

mt_err mt_store_read_begin(mt_store *s, mt_txn **out)
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

void mt_store_read_end(mt_txn *t)
{
    if (!t) {
        return;
    }
    mt_assert(!t->write);
    mdb_txn_abort(t->txn);
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

mt_err mt_store_put(mt_txn *t, mt_db db, const void *key, size_t klen, const void *val,
                    size_t vlen, unsigned flags)
{
    mt_assert(t->write && db < MT_DB_COUNT);
    if (t->poisoned) {
        return t->poisoned;
    }
    MDB_val k = {klen, (void *) key}, v = {vlen, (void *) val};
    int rc = mdb_put(t->txn, t->s->dbi[db], &k, &v, (flags & MT_STORE_APPEND) ? MDB_APPEND : 0);
    if (rc) {
        t->poisoned = map_mdb(rc, db_names[db]);
        return t->poisoned;
    }
    redo_add(t->s, REDO_PUT, db, key, klen, val, vlen);
    return MT_OK;
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

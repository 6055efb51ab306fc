#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mt_diag.h"
#include "mt_filter.h"
#include "mt_log.h"
#include "mt_parked.h"
#include "mt_spec.h"
#include "mt_sub.h"
#include "mt_topic.h"
#include "mt_trial.h"
#include "mt_util.h"
#include "mt_watch.h"
#include <openssl/rand.h>

/*
 * Handler runs per dispatch job, which bounds a group's length: a job
 * starts at the smaller size, and while jobs stop at their limit (the
 * subscription is behind) each next one may do twice as many, up to the
 * larger. Under heavy publishing a subscription then gets more done per
 * group commit instead of falling further behind; once it has caught up,
 * jobs are small again, and so are the groups publishers wait on.
 */
#define EVENTS_PER_JOB 512
#define EVENTS_PER_JOB_MAX 2048
/*
 * Dispatch jobs of one subscription in flight at once: the next is queued
 * while one waits for its group's sync, and the writer runs them in turn
 * (each reads what the one before wrote), so handlers keep up with heavy
 * publishing. With workers one, as a round belongs to one job.
 */
#define DISPATCH_INFLIGHT 2
#define SPEC_READY_MAX 3       /* workers' rounds done and waiting for the writer */
#define SCANS_PER_JOB 8192     /* log entries looked at per job */
#define SCAN_BYTES_MAX (4u << 20) /* event records copied out of the log at a time */
#define SCAN_CHUNK 256         /* events copied out of the log at a time */
#define MAX_LANE MT_LANE_MAX
#define KEY_MAX (64 + 1 + MAX_LANE + 1 + 8 + 8)
#define ERRORS_KEPT 10         /* attempt errors kept per message */
#define ERROR_TEXT_MAX 4096    /* bytes of an error kept (a traceback: twice that) */
#define QUEUE_DUE_END 10      /* time-index due times below this are priority queue places */
#define PROMOTE_MAX 512       /* due waiters moved into the priority queue per job */
#define DLQ_PER_JOB 10000     /* dead letters purged or redriven per writer job */
#define STALL_LOG_US (60 * 1000000LL) /* a dispatch failing in a row is logged this often */

typedef struct sub_rt sub_rt;

/*
 * A definition made over HTTP that did not start (its handler file gone,
 * say): stored with its state, not running, until a PUT or DELETE of its name.
 */
typedef struct dormant_def {
    char *name;
    char *why;
} dormant_def;

#define TRIALS_AT_ONCE 2 /* a reload's trial loads running at once (trials_start) */

/* A reload waiting for its handler's trial load (mt_trial.h), or for its turn to start one. */
typedef struct reload_trial {
    mt_subs *subs;
    char *name;
    uint64_t serial;             /* of the runtime it reloads */
    mt_trial *trial;             /* NULL until it starts (trials_start) */
    struct reload_trial *next;
} reload_trial;

struct mt_subs {
    mt_loop *loop;               /* borrowed */
    mt_store *store;             /* borrowed */
    const mt_sub_runner *runner; /* borrowed */
    const char *topo_path;       /* borrowed: where declared subscriptions come from */
    sub_rt **subs;               /* owned: the live subscriptions */
    int n, cap;
    sub_rt *retired;             /* replaced or deleted, freed when their last job is done */
    char **pending;              /* names with a definition change in flight */
    int npending;
    dormant_def *dormant;        /* stored definitions that did not start */
    int ndormant;
    bool closing;
    void (*on_append)(void *arg);
    void *on_append_arg;
    mt_sub_change_fn on_change;
    void *on_change_arg;
    void (*on_kick)(void *arg);
    void *on_kick_arg;
    uint64_t appends_queued;     /* HTTP appends queued so far (mt_subs_prime) */
    uint64_t serials;            /* runtimes made so far: each gets the next as its serial */
    reload_trial *trials;        /* reloads waiting for their handler's trial load, in order */
};

/* What a dispatch job reports back to the loop thread. */
typedef struct dispatch_out {
    bool more;            /* stopped at a limit: dispatch again at once */
    bool appended;        /* handlers emitted events */
    int64_t next_due_us;  /* earliest retry, 0 = none */
    mt_spec_round *round; /* in: the workers' results for this job, or NULL */
    uint64_t cursor;      /* the subscription's position when the job ended */
    mt_cursor *kv_cur;    /* during the job: its cursor on the kv tables, lent to each run */
    uint64_t write_max;   /* during the job: what its writes may take (mt_txn_job_max) */
} dispatch_out;

struct sub_rt {
    mt_subs *subs;
    uint64_t serial;             /* tells this runtime from any other, even of its name */
    mt_sub_conf *conf;           /* owned */
    char *def;                   /* owned: the JSON definition if made over HTTP, else NULL */
    int refs;                    /* jobs in flight that use this subscription */
    bool retired;                /* replaced or deleted: submits nothing more */
    bool deleting;               /* a DELETE's writer job is in flight: invisible, idle */
    sub_rt *next_retired;
    void *handler;               /* from the runner; used on the writer thread only */
    uint64_t incarnation;        /* of its name (incarnation_get); writer thread only */
    bool incarnation_read;       /* ... once read */
    mt_filter *filter;           /* NULL = none */
    int inflight;                /* dispatch jobs queued or running (DISPATCH_INFLIGHT at most) */
    uint64_t submitted_after;    /* subs->appends_queued when the last dispatch job was queued */
    int job_budget;              /* handler runs the next dispatch job may do */
    bool again;                  /* a kick came while as many as allowed were in flight */
    struct event *timer;         /* fires at the next retry */
    mt_err stalled;              /* why the last dispatch job failed, MT_OK if it did not */
    int64_t stalled_since_us;    /* ... since when (the first failure of a row) */
    int64_t stalled_logged_us;   /* ... and when that was last logged */
    mt_spec *spec;               /* workers > 1: handlers run ahead on worker threads */
    bool spec_running;           /* a round is running */
    /* Finished rounds waiting for jobs, oldest first (one more: a round a job left unfinished). */
    mt_spec_round *ready[SPEC_READY_MAX + 1];
    int nready;
    uint64_t spec_end;           /* the last sequence a round covered */
    uint64_t spec_upto;          /* the head when a round was last asked for (UINT64_MAX: failed) */
    bool spec_reset;             /* overlays dropped: no round until those waiting are applied */
    uint64_t conflicts_seen;     /* ahead_conflicts when the last job ended */
    _Atomic uint64_t ahead_used; /* results of the workers applied by the writer */
    _Atomic uint64_t ahead_rerun; /* results the writer ran again (a read changed, an emit) */
    _Atomic uint64_t ahead_conflicts; /* ... of which a value read had changed */
};

/* ---- keys ---- */

static size_t name_prefix(uint8_t *k, const char *name)
{
    size_t n = strlen(name);
    memcpy(k, name, n);
    k[n] = 0;
    return n + 1;
}

static size_t parked_key(uint8_t *k, const char *name, const char *lane, uint64_t seq)
{
    size_t off = name_prefix(k, name);
    size_t l = strlen(lane);
    memcpy(k + off, lane, l);
    k[off + l] = 0;
    mt_put_be64(k + off + l + 1, seq);
    return off + l + 9;
}

static size_t sched_key(uint8_t *k, const char *name, int64_t due, uint64_t seq)
{
    size_t off = name_prefix(k, name);
    mt_put_be64(k + off, (uint64_t) due);
    mt_put_be64(k + off + 8, seq);
    return off + 16;
}

static size_t dlq_key(uint8_t *k, const char *name, uint64_t seq)
{
    size_t off = name_prefix(k, name);
    mt_put_be64(k + off, seq);
    return off + 8;
}

/* ---- persisted state ---- */

typedef struct sub_state {
    uint64_t cursor;
    uint64_t handled, retried, dead, expired;
    uint64_t dlq;          /* dead letters kept, when dlq_known */
    bool dlq_known;        /* false for a state saved before the count was kept */
    bool paused;
    char last_error[512];
    bool exists;
} sub_state;

/*
 * The record of a subscription's state in the `subs` database:
 *   0   1  format, STATE_FORMAT (the JSON layout of before starts with '{')
 *   1   1  flags: bit 0 paused, bit 1 the dead-letter count is kept
 *   2   6  the dead-letter count (big-endian), if kept
 *   8   8  cursor (big-endian), then handled, retried, dead, expired
 *   48     the last error's bytes, without a NUL (up to 511)
 * Every dispatch job reads and most write it: as JSON, the parse and the
 * dump were a fifth of the writer's instructions in a live fan-out at a
 * few hundred events a second. The JSON layout is still read, so a data
 * directory from before keeps its subscriptions' positions.
 */
#define STATE_FORMAT 2
#define STATE_FIXED 48

static mt_err load_state_json(const void *v, size_t vl, sub_state *st)
{
    json_t *o = json_loadb(v, vl, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return MT_EIO;
    }
    st->cursor = (uint64_t) json_integer_value(json_object_get(o, "cursor"));
    st->handled = (uint64_t) json_integer_value(json_object_get(o, "handled"));
    st->retried = (uint64_t) json_integer_value(json_object_get(o, "retried"));
    st->dead = (uint64_t) json_integer_value(json_object_get(o, "dead"));
    st->expired = (uint64_t) json_integer_value(json_object_get(o, "expired"));
    st->paused = json_is_true(json_object_get(o, "paused"));
    const char *le = json_string_value(json_object_get(o, "last_error"));
    snprintf(st->last_error, sizeof st->last_error, "%s", le ? le : "");
    json_decref(o);
    return MT_OK;
}

static mt_err load_state(mt_txn *t, const char *name, sub_state *st)
{
    memset(st, 0, sizeof *st);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_SUBS, name, strlen(name), &v, &vl);
    if (rc == MT_ENOTFOUND) {
        st->dlq_known = true; /* a new state: none yet */
        return MT_OK;
    }
    if (rc) {
        return rc;
    }
    const uint8_t *r = v;
    if (vl && r[0] == '{') {
        rc = load_state_json(v, vl, st);
    } else if (vl >= STATE_FIXED && r[0] == STATE_FORMAT &&
               vl - STATE_FIXED < sizeof st->last_error) {
        st->paused = r[1] & 1;
        st->dlq_known = r[1] & 2;
        for (int i = 2; i < 8 && st->dlq_known; i++) {
            st->dlq = st->dlq << 8 | r[i];
        }
        st->cursor = mt_get_be64(r + 8);
        st->handled = mt_get_be64(r + 16);
        st->retried = mt_get_be64(r + 24);
        st->dead = mt_get_be64(r + 32);
        st->expired = mt_get_be64(r + 40);
        memcpy(st->last_error, r + STATE_FIXED, vl - STATE_FIXED);
    } else {
        rc = MT_EIO;
    }
    st->exists = rc == MT_OK;
    return rc;
}

static mt_err save_state(mt_txn *t, const char *name, const sub_state *st)
{
    uint8_t r[STATE_FIXED + sizeof st->last_error];
    memset(r, 0, STATE_FIXED);
    r[0] = STATE_FORMAT;
    r[1] = (st->paused ? 1 : 0) | (st->dlq_known ? 2 : 0);
    for (int i = 7, b = 0; i >= 2 && st->dlq_known; i--, b += 8) {
        r[i] = (uint8_t) (st->dlq >> b);
    }
    mt_put_be64(r + 8, st->cursor);
    mt_put_be64(r + 16, st->handled);
    mt_put_be64(r + 24, st->retried);
    mt_put_be64(r + 32, st->dead);
    mt_put_be64(r + 40, st->expired);
    size_t el = strnlen(st->last_error, sizeof st->last_error - 1);
    memcpy(r + STATE_FIXED, st->last_error, el);
    return mt_store_put(t, MT_DB_SUBS, name, strlen(name), r, STATE_FIXED + el, 0);
}

/* Where a new subscription starts reading. */
static mt_err initial_cursor(mt_txn *t, const mt_sub_conf *c, uint64_t *cursor)
{
    *cursor = 0;
    switch (c->start) {
    case MT_START_BEGINNING:
        return MT_OK;
    case MT_START_SEQUENCE:
        *cursor = c->start_sequence;
        return MT_OK;
    case MT_START_END:
        return mt_log_head(t, cursor);
    case MT_START_TIME:
        break;
    }
    /* The first event recorded at or after the time: scan from the front once. */
    mt_cursor *cur;
    mt_err rc = mt_store_cursor_open(t, MT_DB_LOG, &cur);
    if (rc) {
        return rc;
    }
    const void *k, *v;
    size_t kl, vl;
    rc = mt_store_cursor_seek(cur, NULL, 0, &k, &kl, &v, &vl);
    while (rc == MT_OK) {
        mt_event ev;
        if (mt_event_decode(v, vl, &ev) == MT_OK && ev.recordedtime_us >= c->start_time_us) {
            break;
        }
        *cursor = mt_get_be64(k);
        rc = mt_store_cursor_next(cur, &k, &kl, &v, &vl);
    }
    mt_store_cursor_close(cur);
    return rc == MT_ENOTFOUND ? MT_OK : rc;
}

/* ---- parked messages ---- */

/*
 * Reads the parked record at key 'k' into 'p' (mt_parked.h; free it with
 * mt_parked_free). MT_ENOTFOUND if there is none.
 */
static mt_err parked_load(mt_txn *t, const uint8_t *k, size_t kl, mt_parked *p)
{
    const void *v;
    size_t vl;
    mt_parked_init(p);
    mt_err rc = mt_store_get(t, MT_DB_PARKED, k, kl, &v, &vl);
    return rc ? rc : mt_parked_decode(v, vl, p);
}

static mt_err parked_put(mt_txn *t, const uint8_t *k, size_t kl, const mt_parked *p)
{
    mt_buf b;
    mt_buf_init(&b);
    mt_parked_encode(p, &b);
    mt_err rc = mt_store_put(t, MT_DB_PARKED, k, kl, b.data, b.len, 0);
    mt_buf_free(&b);
    return rc;
}

static mt_err put_json(mt_txn *t, mt_db db, const uint8_t *k, size_t kl, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);
    if (!text) {
        return MT_EINVAL;
    }
    mt_err rc = mt_store_put(t, db, k, kl, text, strlen(text), 0);
    free(text);
    return rc;
}

/* Is anything parked in 'lane'? */
static mt_err lane_busy(mt_txn *t, const char *name, const char *lane, bool *busy)
{
    uint8_t k[KEY_MAX];
    size_t kl = parked_key(k, name, lane, 0) - 8;
    const void *ck, *cv;
    size_t ckl, cvl;
    mt_err rc = mt_store_first_with_prefix(t, MT_DB_PARKED, k, kl, kl, &ck, &ckl, &cv, &cvl);
    /* A longer lane that starts with this one is another lane. */
    *busy = rc == MT_OK && ckl == kl + 8;
    return rc == MT_ENOTFOUND ? MT_OK : rc;
}

static int priority_of(const mt_event *ev)
{
    return ev->priority < 0 ? 0 : ev->priority;
}

/*
 * The lane of 'ev': "" (strict), "s:SUBJECT" (subject), "#SEQ" (no order,
 * or no subject). With priority each priority has lanes of its own,
 * "pN:" + the lane, so order holds within one priority and a higher one
 * may pass a lower one.
 */
static void lane_of(const mt_sub_conf *c, const mt_event *ev, char *lane, size_t len)
{
    size_t off = 0;
    if (c->priority && c->ordering != MT_ORDER_NONE) {
        off = (size_t) snprintf(lane, len, "p%d:", priority_of(ev));
    }
    if (c->ordering == MT_ORDER_STRICT) {
        lane[off] = '\0';
    } else if (c->ordering == MT_ORDER_SUBJECT && ev->attr[MT_ATTR_SUBJECT]) {
        /* Subjects are at most MT_EVENT_MAX_SUBJECT bytes: "pN:s:" + subject fits. */
        size_t n = strlen(ev->attr[MT_ATTR_SUBJECT]);
        mt_assert(off + n + 3 <= len);
        lane[off] = 's';
        lane[off + 1] = ':';
        memcpy(lane + off + 2, ev->attr[MT_ATTR_SUBJECT], n + 1);
    } else {
        snprintf(lane, len, "#%llu", (unsigned long long) ev->sequence);
    }
}

/* Whether messages of 'lane' wait for one another ("#SEQ" lanes hold one message). */
static bool lane_ordered(const char *lane)
{
    return lane[0] != '#';
}

/*
 * The due time that queues a message by priority in the time index: 9 -
 * priority microseconds after the epoch, far in the past, so queued
 * messages come out highest priority first, in log order within one
 * priority. Retries, embargoes and leases wait at real due times and join
 * the queue when they fall due (promote_due).
 */
static int64_t queue_due(const mt_event *ev)
{
    return 9 - priority_of(ev);
}

/*
 * Makes message 'seq' the head of 'lane', due at 'due' in the time index.
 * 'rec' is its parked record (kept: attempts, errors), or NULL for a new one.
 */
static mt_err schedule_head(sub_rt *s, mt_txn *t, const char *lane, uint64_t seq,
                            const mt_parked *rec, int64_t due)
{
    mt_parked r;
    mt_parked_init(&r);
    if (rec) {
        r.attempts = rec->attempts;
        r.errors = rec->errors; /* borrowed for the write */
        r.redriven = rec->redriven;
    }
    r.state = MT_PARK_RETRY;
    r.due_us = due;
    snprintf(r.lane, sizeof r.lane, "%s", lane);
    uint8_t k[KEY_MAX], sk[KEY_MAX];
    size_t kl = parked_key(k, s->conf->name, lane, seq);
    size_t skl = sched_key(sk, s->conf->name, due, seq);
    mt_err rc = parked_put(t, k, kl, &r);
    if (rc == MT_OK) {
        rc = mt_store_put(t, MT_DB_SCHED, sk, skl, k, kl, 0);
    }
    return rc;
}

/* When a message that waited in 'lane' is due once it heads the lane. */
static int64_t lane_due(const char *lane)
{
    if (lane[0] == 'p' && lane[1] >= '0' && lane[1] <= '9' && lane[2] == ':') {
        return 9 - (lane[1] - '0');
    }
    return mt_now_us();
}

/*
 * The head of 'lane' is gone: the first message blocked behind it becomes
 * the head, queued in the time index (lane_due). Does nothing if the lane
 * is empty or its first message has a due time of its own.
 */
static mt_err requeue_next(sub_rt *s, mt_txn *t, const char *lane)
{
    if (!lane_ordered(lane)) {
        return MT_OK;
    }
    uint8_t pfx[KEY_MAX];
    size_t pl = parked_key(pfx, s->conf->name, lane, 0) - 8;
    const void *ck, *cv;
    size_t ckl, cvl;
    mt_err rc = mt_store_first_with_prefix(t, MT_DB_PARKED, pfx, pl, pl, &ck, &ckl, &cv, &cvl);
    if (rc == MT_ENOTFOUND || (rc == MT_OK && ckl != pl + 8)) {
        return MT_OK;
    }
    if (rc) {
        return rc;
    }
    uint64_t seq = mt_get_be64((const uint8_t *) ck + pl);
    mt_parked rec;
    rc = mt_parked_decode(cv, cvl, &rec);
    if (rc == MT_OK && rec.state == MT_PARK_BLOCKED) {
        rc = schedule_head(s, t, lane, seq, &rec, lane_due(lane));
    }
    mt_parked_free(&rec);
    return rc;
}

/*
 * A random number for jitter: xorshift64 per thread, seeded from OpenSSL's
 * generator on first use. random() was never seeded, so every engine drew
 * the same delays, also after a restart, and retries of engines started
 * together did not spread at all.
 */
static uint64_t jitter_draw(void)
{
    static _Thread_local uint64_t x;
    while (x == 0) {
        if (RAND_bytes((unsigned char *) &x, sizeof x) != 1) {
            x = (uint64_t) mt_now_us() ^ ((uint64_t) getpid() << 32);
        }
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

int64_t mt_sub_backoff_us(const mt_sub_conf *c, uint32_t attempts)
{
    uint64_t d = c->backoff_ms;
    for (uint32_t i = 1; i < attempts && d < c->max_backoff_ms; i++) {
        d *= 2;
    }
    if (d > c->max_backoff_ms) {
        d = c->max_backoff_ms;
    }
    /* Equal jitter: half fixed, half random, so retries of many messages spread out. */
    uint64_t half = d * 1000 / 2;
    return (int64_t) (half + (half ? jitter_draw() % (half + 1) : 0));
}

/*
 * Reads event 'seq' into a private copy (*buf, freed by the caller): a
 * handler's own appends may move the log's dirty pages under a pointer
 * into the map.
 */
static mt_err load_event(mt_txn *t, uint64_t seq, mt_event *ev, void **buf)
{
    *buf = NULL;
    uint8_t k[8];
    mt_put_be64(k, seq);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_LOG, k, 8, &v, &vl);
    if (rc) {
        return rc;
    }
    *buf = mt_xmalloc(vl);
    memcpy(*buf, v, vl);
    if (mt_event_decode(*buf, vl, ev)) {
        free(*buf);
        *buf = NULL;
        return MT_EIO;
    }
    return MT_OK;
}

/* Whether 'ev' has expired: its expirytime, or the subscription's ttl, has passed. */
static bool expired(const mt_sub_conf *c, const mt_event *ev, int64_t now)
{
    if (ev->expiry_us && now >= ev->expiry_us) {
        return true;
    }
    return c->ttl_ms && now >= ev->recordedtime_us + (int64_t) c->ttl_ms * 1000;
}

/* ---- running the handler ---- */

typedef struct attempt_result {
    bool ok;
    bool rejected;
    mt_buf error;
    mt_buf traceback;
} attempt_result;

static void result_init(attempt_result *r)
{
    memset(r, 0, sizeof *r);
    mt_buf_init(&r->error);
    mt_buf_init(&r->traceback);
}

static void result_free(attempt_result *r)
{
    mt_buf_free(&r->error);
    mt_buf_free(&r->traceback);
}

/*
 * Runs the handler on 'ev' in a savepoint. Effects stay only on success.
 * Returns a store error (the whole job must fail) or MT_OK with *r filled.
 */
/*
 * What a worker recorded for 'ev', applied in the savepoint if every value
 * it read still holds: *used then says so and *hrc is the handler's
 * outcome. Returns a store error only.
 */
static mt_err apply_ahead(sub_rt *s, mt_spec_result *ahead, mt_fx *fx, attempt_result *r,
                          mt_err *hrc, bool *used)
{
    *used = false;
    if (!ahead->effects) {
        s->ahead_rerun++;
        return MT_OK;
    }
    mt_err rc = mt_fx_effects_validate(ahead->effects, fx->base);
    if (rc == MT_ECONFLICT) {
        s->ahead_rerun++;
        s->ahead_conflicts++;
        return MT_OK;
    }
    bool ok = ahead->rc == MT_OK && !ahead->reject;
    if (rc == MT_OK) {
        rc = mt_fx_effects_apply(ahead->effects, fx, ok);
    }
    if (rc) {
        return rc;
    }
    *used = true;
    *hrc = ahead->rc;
    if (ahead->reject) {
        mt_fx_reject(fx, ahead->reject);
    }
    mt_buf_add(&r->error, ahead->error.data, ahead->error.len);
    mt_buf_add(&r->traceback, ahead->traceback.data, ahead->traceback.len);
    s->ahead_used++;
    return MT_OK;
}

static mt_err run_attempt(sub_rt *s, mt_txn *t, const mt_event *ev, uint32_t attempt,
                          attempt_result *r, dispatch_out *out)
{
    if (mt_watch_take(s->conf->name, ev, &r->error)) {
        /* It got stuck on this event before the restart: it would again. */
        r->rejected = true;
        return MT_OK;
    }
    /* Buffered: a failure leaves nothing to undo, and most runs need no savepoint. */
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, s->conf->name, ev);
    fx.incarnation = s->incarnation;
    mt_fx_lend_cursor(&fx, &out->kv_cur);
    mt_err hrc = MT_OK;
    bool used = false;
    mt_spec_result *ahead = attempt == 1 ? mt_spec_take(out->round, ev->sequence) : NULL;
    if (ahead) {
        mt_err rc = apply_ahead(s, ahead, &fx, r, &hrc, &used);
        if (rc) {
            mt_fx_free(&fx);
            return rc;
        }
    }
    if (!used) {
        hrc = s->subs->runner->invoke(s->handler, ev, attempt, &fx, &r->error, &r->traceback);
    }
    if (hrc == MT_EFULL || hrc == MT_EIO) {
        /* The store failed under the handler: not the message's fault. */
        mt_fx_free(&fx);
        return hrc;
    }
    bool ok = hrc == MT_OK && !fx.reject;
    /* Effects that would not fit the write-ahead file never will: failing
     * the job (MT_ETOOBIG) retried it, whole, every second. */
    size_t bytes = ok ? mt_fx_pending_bytes(&fx) : 0;
    bool too_big = ok && bytes > out->write_max / 2;
    mt_err rc = mt_fx_finish(&fx, ok && !too_big);
    if (rc) {
        mt_fx_free(&fx);
        return rc;
    }
    if (too_big) {
        r->rejected = true;
        mt_buf_addf(&r->error,
                    "its effects take about %zu bytes of the write-ahead file, more than half "
                    "of the %llu one write may take (engine.wal_size); not retried: they would "
                    "not fit again",
                    bytes, (unsigned long long) out->write_max);
    } else if (ok) {
        r->ok = true;
        out->appended |= fx.emitted > 0;
    } else if (fx.reject) {
        r->rejected = true;
        mt_buf_free(&r->error);
        mt_buf_addf(&r->error, "rejected: %s", fx.reject);
    } else if (hrc == MT_EINVAL) {
        r->rejected = true; /* its data can never be given to the handler: no retries */
        if (r->error.len == 0) {
            mt_buf_adds(&r->error, "the event cannot be given to the handler");
        }
    } else if (r->error.len == 0) {
        mt_buf_adds(&r->error, mt_err_str(hrc));
    }
    mt_fx_free(&fx);
    return MT_OK;
}

/*
 * An attempt's error or traceback as kept in its parked record: at most
 * 'max' bytes (not inside a UTF-8 character), then how much was cut. A
 * handler's error(("E"):rep(1e7)) would otherwise be stored whole, for
 * every attempt kept, and written again at each attempt.
 */
static json_t *kept_text(const char *p, size_t len, size_t max)
{
    size_t keep = mt_diag_cut_at(p, len, max);
    if (keep == len) {
        return mt_diag_text(p, len);
    }
    mt_buf cut;
    mt_buf_init(&cut);
    mt_buf_add(&cut, p, keep);
    mt_buf_addf(&cut, " ... (%zu more bytes cut)", len - keep);
    json_t *v = mt_diag_text(mt_buf_cstr(&cut), cut.len);
    mt_buf_free(&cut);
    return v;
}

/* An attempt's entry in a parked record's errors: attempt, time, error. */
static json_t *text_entry(uint32_t attempt, const char *error, size_t len)
{
    char ts[40];
    mt_time_format_us(mt_now_us(), ts, sizeof ts);
    json_t *e = json_object();
    json_object_set_new(e, "attempt", json_integer(attempt));
    json_object_set_new(e, "time", json_string(ts));
    json_object_set_new(e, "error", kept_text(error, len, ERROR_TEXT_MAX));
    return e;
}

static json_t *error_entry(uint32_t attempt, attempt_result *r)
{
    json_t *e = text_entry(attempt, mt_buf_cstr(&r->error), r->error.len);
    if (r->traceback.len) {
        json_t *tb =
            kept_text(mt_buf_cstr(&r->traceback), r->traceback.len, ERROR_TEXT_MAX * 2);
        if (tb) {
            json_object_set_new(e, "traceback", tb);
        }
    }
    return e;
}

static uint64_t count_prefix(mt_txn *t, mt_db db, const char *name);

/*
 * Makes st's dead-letter count known: a state saved before it was kept
 * (format 2 without bit 1) is counted once, then kept with every change.
 * Counting on every status read walked every dead letter on the loop
 * thread: 160-570 ms with a million of them.
 */
static void dlq_count_known(mt_txn *t, const char *name, sub_state *st)
{
    if (!st->dlq_known) {
        st->dlq = count_prefix(t, MT_DB_DLQ, name);
        st->dlq_known = true;
    }
}

/* Writes the dead letter for 'ev' with the attempts and errors of 'rec'. */
static mt_err dead_letter(sub_rt *s, mt_txn *t, const mt_event *ev, const mt_parked *rec,
                          const char *reason, sub_state *st)
{
    char ts[40];
    mt_time_format_us(mt_now_us(), ts, sizeof ts);
    char seq[24];
    snprintf(seq, sizeof seq, "%llu", (unsigned long long) ev->sequence);
    json_t *d = json_object();
    json_object_set_new(d, "sequence", json_string(seq));
    json_object_set_new(d, "id", json_string(ev->attr[MT_ATTR_ID]));
    json_object_set_new(d, "source", json_string(ev->attr[MT_ATTR_SOURCE]));
    json_object_set_new(d, "type", json_string(ev->attr[MT_ATTR_TYPE]));
    if (ev->attr[MT_ATTR_SUBJECT]) {
        json_object_set_new(d, "subject", json_string(ev->attr[MT_ATTR_SUBJECT]));
    }
    json_object_set_new(d, "reason", kept_text(reason, strlen(reason), ERROR_TEXT_MAX));
    json_object_set_new(d, "attempts", json_integer((json_int_t) rec->attempts));
    json_object_set_new(d, "errors", mt_parked_errors(rec));
    json_object_set_new(d, "deadlettered", json_string(ts));
    uint8_t k[KEY_MAX];
    size_t kl = dlq_key(k, s->conf->name, ev->sequence);
    const void *old;
    size_t oldl;
    dlq_count_known(t, s->conf->name, st);
    bool again = mt_store_get(t, MT_DB_DLQ, k, kl, &old, &oldl) == MT_OK;
    mt_err rc = put_json(t, MT_DB_DLQ, k, kl, d);
    if (rc == MT_OK && !again) {
        st->dlq++;
    }
    json_decref(d);
    mt_diag_emit(MT_DIAG_WARN, (const char *const[]){"subscription", s->conf->name, "sequence",
                                                     seq, NULL},
                 "subscription '%s': event %s dead-lettered: %s", s->conf->name, seq, reason);
    return rc;
}

/*
 * Runs attempt number 'attempt' of 'ev' (lane 'lane') and records the
 * outcome: success, a retry parked at the head of its lane, or a dead
 * letter. 'rec' is the parked record (NULL for a first attempt; the caller
 * frees it). Sets *freed when the lane's head is gone (success or dead).
 */
static mt_err deliver(sub_rt *s, mt_txn *t, const mt_event *ev, const char *lane,
                      uint32_t attempt, mt_parked *rec, sub_state *st, dispatch_out *out,
                      bool *freed)
{
    const mt_sub_conf *c = s->conf;
    uint8_t k[KEY_MAX];
    size_t kl = parked_key(k, c->name, lane, ev->sequence);
    *freed = false;
    if (!(rec && rec->redriven) && expired(c, ev, mt_now_us())) {
        /* Never delivered: counted, and dead-lettered if the subscription asks. */
        st->expired++;
        *freed = true;
        mt_err rc = MT_OK;
        if (c->expiry_dead_letter) {
            mt_parked none;
            mt_parked_init(&none);
            none.attempts = attempt - 1;
            rc = dead_letter(s, t, ev, rec ? rec : &none, "expired", st);
        }
        if (rc == MT_OK && rec) {
            rc = mt_store_del(t, MT_DB_PARKED, k, kl);
        }
        return rc;
    }
    if (ev->deliverafter_us > mt_now_us()) {
        /* Its turn came (it waited behind its lane's head), not yet its time. */
        mt_err rc = schedule_head(s, t, lane, ev->sequence, rec, ev->deliverafter_us);
        if (!out->next_due_us || ev->deliverafter_us < out->next_due_us) {
            out->next_due_us = ev->deliverafter_us;
        }
        return rc;
    }
    attempt_result r;
    result_init(&r);
    mt_err rc = run_attempt(s, t, ev, attempt, &r, out);
    if (rc == MT_OK && r.ok) {
        st->handled++;
        *freed = true;
        if (rec) {
            rc = mt_store_del(t, MT_DB_PARKED, k, kl);
        }
    } else if (rc == MT_OK) {
        mt_parked fresh;
        mt_parked_init(&fresh);
        mt_parked *p = rec ? rec : &fresh;
        p->attempts = attempt;
        mt_parked_add_error(p, error_entry(attempt, &r), ERRORS_KEPT);
        snprintf(st->last_error, sizeof st->last_error, "sequence %llu: %s",
                 (unsigned long long) ev->sequence, mt_buf_cstr(&r.error));
        if (r.rejected || attempt >= c->max_attempts) {
            st->dead++;
            rc = dead_letter(s, t, ev, p, r.rejected ? mt_buf_cstr(&r.error)
                                                     : "retries exhausted", st);
            if (rc == MT_OK && p->state != MT_PARK_NONE) {
                rc = mt_store_del(t, MT_DB_PARKED, k, kl);
            }
            *freed = true;
        } else {
            int64_t due = mt_now_us() + mt_sub_backoff_us(c, attempt);
            p->state = MT_PARK_RETRY;
            p->due_us = due;
            snprintf(p->lane, sizeof p->lane, "%s", lane);
            rc = parked_put(t, k, kl, p);
            uint8_t sk[KEY_MAX];
            size_t skl = sched_key(sk, c->name, due, ev->sequence);
            if (rc == MT_OK) {
                rc = mt_store_put(t, MT_DB_SCHED, sk, skl, k, kl, 0);
            }
            st->retried++;
            if (!out->next_due_us || due < out->next_due_us) {
                out->next_due_us = due;
            }
        }
        mt_parked_free(&fresh);
    }
    result_free(&r);
    return rc;
}

/*
 * Holds 'ev' back until its deliverafter time: parked at the head of its
 * lane, due then, so the time index delivers it (also after a restart).
 */
static mt_err embargo(sub_rt *s, mt_txn *t, const mt_event *ev, const char *lane,
                      dispatch_out *out)
{
    mt_err rc = schedule_head(s, t, lane, ev->sequence, NULL, ev->deliverafter_us);
    if (!out->next_due_us || ev->deliverafter_us < out->next_due_us) {
        out->next_due_us = ev->deliverafter_us;
    }
    return rc;
}

/* Parks 'seq' behind the head of its lane. */
static mt_err park_blocked(sub_rt *s, mt_txn *t, const char *lane, uint64_t seq)
{
    uint8_t k[KEY_MAX];
    size_t kl = parked_key(k, s->conf->name, lane, seq);
    mt_parked rec;
    mt_parked_init(&rec);
    rec.state = MT_PARK_BLOCKED;
    snprintf(rec.lane, sizeof rec.lane, "%s", lane);
    return parked_put(t, k, kl, &rec);
}

/*
 * The head of 'lane' is gone: run the messages blocked behind it, in order,
 * until one fails (it becomes the new head) or the lane is empty. With
 * priority the next one is queued instead, to go in priority order.
 */
static mt_err release_lane(sub_rt *s, mt_txn *t, const char *lane, sub_state *st,
                           dispatch_out *out, int *budget)
{
    const char *name = s->conf->name;
    if (s->conf->priority) {
        return requeue_next(s, t, lane);
    }
    uint8_t pfx[KEY_MAX];
    size_t pl = parked_key(pfx, name, lane, 0) - 8;
    for (;;) {
        const void *ck, *cv;
        size_t ckl, cvl;
        mt_err rc = mt_store_first_with_prefix(t, MT_DB_PARKED, pfx, pl, pl, &ck, &ckl, &cv, &cvl);
        bool found = rc == MT_OK && ckl == pl + 8;
        uint64_t seq = found ? mt_get_be64((const uint8_t *) ck + pl) : 0;
        if (rc && rc != MT_ENOTFOUND) {
            return rc;
        }
        mt_parked rec;
        mt_parked_init(&rec);
        if (found && (rc = mt_parked_decode(cv, cvl, &rec)) != MT_OK) {
            return rc;
        }
        if (!found || rec.state != MT_PARK_BLOCKED) {
            /* Empty, or the next one is itself waiting for a retry. */
            mt_parked_free(&rec);
            return MT_OK;
        }
        if (*budget <= 0) {
            /*
             * Out of budget for this job: make the lane's new head due now,
             * so the time index brings the next job back to this lane.
             */
            rc = schedule_head(s, t, lane, seq, &rec, mt_now_us());
            mt_parked_free(&rec);
            out->more = true;
            return rc;
        }
        mt_event ev;
        void *buf;
        rc = load_event(t, seq, &ev, &buf);
        if (rc) {
            mt_parked_free(&rec);
            return rc;
        }
        (*budget)--;
        bool freed;
        rc = deliver(s, t, &ev, lane, 1, &rec, st, out, &freed);
        mt_parked_free(&rec);
        free(buf);
        if (rc || !freed) {
            return rc;
        }
    }
}

/*
 * Whether an event of this type is for S by its topics. The answer for the
 * last type is kept in 'memo', local to one walk of the log (the log holds
 * runs of one type, and matching checks both the pattern and the type).
 */
typedef struct type_memo {
    char type[MT_EVENT_MAX_TYPE + 1];
    bool known, match;
} type_memo;

static bool type_matches(sub_rt *s, const char *type, type_memo *memo)
{
    if (!type) {
        return false;
    }
    if (memo->known && strcmp(memo->type, type) == 0) {
        return memo->match;
    }
    bool ok = false;
    for (int i = 0; i < s->conf->ntopics && !ok; i++) {
        bool m;
        if (mt_topic_match(s->conf->topics[i], type, &m) == MT_OK) {
            ok = m;
        }
    }
    size_t len = strlen(type);
    if (len < sizeof memo->type) {
        memcpy(memo->type, type, len + 1);
        memo->known = true;
        memo->match = ok;
    }
    return ok;
}

static bool matches(sub_rt *s, const mt_event *ev, type_memo *memo)
{
    if (!type_matches(s, ev->attr[MT_ATTR_TYPE], memo)) {
        return false;
    }
    bool m = false;
    return !s->filter || (mt_filter_eval(s->filter, ev, &m) == MT_OK && m);
}

/*
 * Whether this dispatch job has written enough: a quarter of what one job
 * may put in the write-ahead file. One more run may add up to half of it
 * (deliver refuses more), so the job stays within it: a backlog of large
 * runs was once packed into one job too large for the file, refused, and
 * tried again, whole, every second.
 */
static bool job_full(mt_txn *t, const dispatch_out *out)
{
    return mt_txn_job_bytes(t) > out->write_max / 4;
}

/*
 * Takes the first entry of the time index at or after key 'from'
 * (from_len bytes, its first pl the subscription's name prefix) if it is
 * due by 'now': removes it and loads the parked record it points to into
 * *rec (the caller frees it) and that record's key into pk (KEY_MAX bytes).
 * Stale entries (no record) are removed and skipped. MT_ENOTFOUND when
 * nothing is due; *next_due is then the next entry's due time, 0 if none.
 */
static mt_err take_due(mt_txn *t, const uint8_t *from, size_t from_len, size_t pl, int64_t now,
                       uint8_t *pk, size_t *pkl, mt_parked *rec, int64_t *next_due)
{
    *next_due = 0;
    for (;;) {
        const void *ck, *cv;
        size_t ckl, cvl;
        mt_err rc = mt_store_first_with_prefix(t, MT_DB_SCHED, from, from_len, pl, &ck, &ckl, &cv,
                                               &cvl);
        if (rc) {
            return rc;
        }
        if (ckl != pl + 16 || cvl > KEY_MAX || cvl < 8) {
            return MT_EIO;
        }
        int64_t due = (int64_t) mt_get_be64((const uint8_t *) ck + pl);
        if (due > now) {
            *next_due = due;
            return MT_ENOTFOUND;
        }
        uint8_t sk[KEY_MAX];
        size_t skl = ckl;
        memcpy(sk, ck, ckl);
        memcpy(pk, cv, cvl);
        *pkl = cvl;
        rc = mt_store_del(t, MT_DB_SCHED, sk, skl);
        if (rc == MT_OK) {
            rc = parked_load(t, pk, *pkl, rec);
        }
        if (rc != MT_ENOTFOUND) {
            return rc; /* else a stale index entry, now gone */
        }
    }
}

/*
 * With priority: what waits at a real due time (a retry, an embargo, an
 * expired lease) and has fallen due joins the queue at its event's
 * priority, at most PROMOTE_MAX per job. Left where it was, it sorted after
 * every queued message, so under a steady inflow a due retry of priority 9
 * waited for every queued message of any priority, its subject held back
 * meanwhile.
 */
static mt_err promote_due(sub_rt *s, mt_txn *t, int64_t now)
{
    const char *name = s->conf->name;
    uint8_t from[KEY_MAX], pk[KEY_MAX], sk[KEY_MAX];
    size_t pl = name_prefix(from, name);
    size_t from_len = sched_key(from, name, QUEUE_DUE_END, 0);
    for (int n = 0; n < PROMOTE_MAX; n++) {
        mt_parked rec;
        size_t pkl;
        int64_t next;
        mt_err rc = take_due(t, from, from_len, pl, now, pk, &pkl, &rec, &next);
        if (rc == MT_ENOTFOUND) {
            return MT_OK;
        }
        if (rc) {
            return rc;
        }
        uint64_t seq = mt_get_be64(pk + pkl - 8);
        mt_event ev;
        void *buf;
        rc = load_event(t, seq, &ev, &buf);
        if (rc == MT_OK) {
            rec.due_us = queue_due(&ev);
            free(buf);
            rc = parked_put(t, pk, pkl, &rec);
        }
        if (rc == MT_OK) {
            size_t skl = sched_key(sk, name, rec.due_us, seq);
            rc = mt_store_put(t, MT_DB_SCHED, sk, skl, pk, pkl, 0);
        }
        mt_parked_free(&rec);
        if (rc) {
            return rc;
        }
    }
    return MT_OK;
}

/* Runs the retries that are due (in due order). */
static mt_err run_due(sub_rt *s, mt_txn *t, sub_state *st, dispatch_out *out, int *budget)
{
    const char *name = s->conf->name;
    int64_t now = mt_now_us();
    if (s->conf->priority) {
        mt_err rc = promote_due(s, t, now);
        if (rc) {
            return rc;
        }
    }
    for (;;) {
        if (*budget <= 0 || job_full(t, out)) {
            out->more = true;
            return MT_OK;
        }
        uint8_t pfx[KEY_MAX], pk[KEY_MAX];
        size_t pl = name_prefix(pfx, name), pkl;
        mt_parked rec;
        int64_t due;
        mt_err rc = take_due(t, pfx, pl, pl, now, pk, &pkl, &rec, &due);
        if (rc == MT_ENOTFOUND) {
            if (due && (!out->next_due_us || due < out->next_due_us)) {
                out->next_due_us = due;
            }
            return MT_OK;
        }
        if (rc) {
            return rc;
        }
        uint64_t seq = mt_get_be64(pk + pkl - 8);
        char lane[MAX_LANE + 1];
        snprintf(lane, sizeof lane, "%s", rec.lane);
        mt_event ev;
        void *buf;
        rc = load_event(t, seq, &ev, &buf);
        if (rc) {
            mt_parked_free(&rec);
            return rc;
        }
        (*budget)--;
        bool freed;
        rc = deliver(s, t, &ev, lane, rec.attempts + 1, &rec, st, out, &freed);
        mt_parked_free(&rec);
        free(buf);
        if (rc == MT_OK && freed) {
            rc = release_lane(s, t, lane, st, out, budget);
        }
        if (rc) {
            return rc;
        }
    }
}

/* One dispatch job: what it reports back, and the round of results it was given. */
typedef struct dispatch_job {
    sub_rt *s;
    int budget;           /* handler runs this job may do */
    uint64_t upto;        /* the last new event it may take (with workers: the rounds' end) */
    dispatch_out out;
} dispatch_job;

/*
 * The events of the log after 'after' and up to 'upto' that S takes, at
 * most 'max' of them (fewer if their records pass SCAN_BYTES_MAX, or
 * *scans_left log entries are looked at first), copied out of the map by
 * one cursor walk: a
 * handler's emit writes to the log, which would move what a cursor points
 * at.
 */
typedef struct scan_batch {
    mt_buf records;            /* the matching events' records, one after another */
    size_t end[SCAN_CHUNK];    /* end[i]: where event i's record ends in 'records' */
    mt_event ev[SCAN_CHUNK];   /* event i, decoded: pointing into the map, then into 'records' */
    const void *from[SCAN_CHUNK]; /* where in the map record i was decoded */
    int n;
    uint64_t last;             /* the last log entry looked at (0: none) */
    bool more;                 /* stopped at a limit, not at the log's end */
    bool past_upto;            /* stopped before an event after 'upto' */
} scan_batch;

static mt_err scan_log(sub_rt *s, mt_txn *t, uint64_t after, uint64_t upto, int max,
                       int *scans_left, scan_batch *b)
{
    mt_cursor *cur;
    mt_err rc = mt_store_cursor_open(t, MT_DB_LOG, &cur);
    if (rc) {
        return rc;
    }
    b->n = 0;
    b->last = 0;
    b->more = false;
    b->past_upto = false;
    b->records.len = 0;
    uint8_t start[8];
    mt_put_be64(start, after + 1);
    const void *k, *v;
    size_t kl, vl;
    type_memo memo = {.known = false};
    mt_err crc = mt_store_cursor_seek(cur, start, 8, &k, &kl, &v, &vl);
    while (crc == MT_OK) {
        if (b->n >= max || *scans_left <= 0 || b->records.len >= SCAN_BYTES_MAX) {
            b->more = true;
            break;
        }
        if (kl == 8 && mt_get_be64(k) > upto) {
            b->past_upto = true;
            break;
        }
        --*scans_left;
        mt_event ev;
        if (mt_event_decode(v, vl, &ev)) {
            crc = MT_EIO;
            break;
        }
        if (matches(s, &ev, &memo)) {
            mt_buf_add(&b->records, v, vl);
            b->ev[b->n] = ev;
            b->from[b->n] = v;
            b->end[b->n++] = b->records.len;
        }
        b->last = ev.sequence;
        crc = mt_store_cursor_next(cur, &k, &kl, &v, &vl);
    }
    mt_store_cursor_close(cur);
    /* The copies are all made (no more moves of 'records'): point the events at them. */
    for (int i = 0; i < b->n; i++) {
        mt_event_rebase(&b->ev[i], b->from[i], b->records.data + (i ? b->end[i - 1] : 0));
    }
    return crc == MT_ENOTFOUND ? MT_OK : crc;
}

/*
 * Takes up to 'budget' events after st->cursor (and up to 'upto'),
 * SCAN_CHUNK at a time, and delivers them in log order: each is parked behind a busy lane,
 * embargoed, queued by priority, or run. st->cursor follows.
 */
static mt_err scan_and_deliver(sub_rt *s, mt_txn *t, sub_state *st, dispatch_out *out,
                               int budget, uint64_t upto, bool any_parked)
{
    const mt_sub_conf *c = s->conf;
    /* A priority subscription only queues here (run_due delivers), and queues
     * as far ahead as it may look, so that a later event can overtake. */
    int left = c->priority ? SCANS_PER_JOB : budget;
    int scans_left = SCANS_PER_JOB;
    scan_batch *b = mt_xmalloc(sizeof *b);
    mt_buf_init(&b->records);
    mt_err rc = MT_OK;
    bool stopped = false, full = false;
    for (;;) {
        rc = scan_log(s, t, st->cursor, upto, left < SCAN_CHUNK ? left : SCAN_CHUNK, &scans_left,
                      b);
        for (int i = 0; rc == MT_OK && i < b->n; i++) {
            if (job_full(t, out)) {
                stopped = full = true; /* the cursor stays before this event */
                break;
            }
            const mt_event *ev = &b->ev[i];
            uint64_t seq = ev->sequence;
            char lane[MAX_LANE + 1];
            lane_of(c, ev, lane, sizeof lane);
            bool busy = false;
            if (any_parked) {
                /* Only a subscription with parked messages can have a busy lane. */
                rc = lane_busy(t, c->name, lane, &busy);
            }
            int64_t now = ev->deliverafter_us ? mt_now_us() : 0;
            if (rc == MT_OK && busy) {
                rc = park_blocked(s, t, lane, seq);
            } else if (rc == MT_OK && ev->deliverafter_us > now && !expired(c, ev, now)) {
                rc = embargo(s, t, ev, lane, out);
                any_parked = true;
            } else if (rc == MT_OK && c->priority) {
                /* Queued by priority; run_due takes the highest first. */
                rc = schedule_head(s, t, lane, seq, NULL, queue_due(ev));
                any_parked = true;
            } else if (rc == MT_OK) {
                bool freed;
                rc = deliver(s, t, ev, lane, 1, NULL, st, out, &freed);
                any_parked |= !freed;
                if (rc == MT_OK && c->ordering == MT_ORDER_STRICT && !freed) {
                    st->cursor = seq;
                    stopped = true; /* strict: nothing passes a failed message */
                    break;
                }
            }
            st->cursor = seq;
        }
        if (rc || stopped) {
            out->more |= full;
            break;
        }
        if (b->last) {
            st->cursor = b->last;
        }
        left -= b->n;
        if (b->past_upto) {
            out->more = true; /* the next round runs them, in the next job */
            break;
        }
        if (!b->more) {
            break; /* the log's end */
        }
        if (left <= 0 || scans_left <= 0) {
            out->more = true;
            break;
        }
    }
    mt_buf_free(&b->records);
    free(b);
    return rc;
}

/*
 * A name's incarnation: 0 until a subscription of that name is deleted (or
 * a new one finds the state of an earlier one, from the topology file),
 * then one more each time. Emitted ids carry it past 0 (mt_fx.h), so a
 * subscription made again, which starts afresh, does not have its emits
 * taken for its predecessor's: the log keeps every id it has seen.
 */
#define INCARNATION_KEY "sub.incarnation/"

static mt_err incarnation_get(mt_txn *t, const char *name, uint64_t *out)
{
    char k[sizeof INCARNATION_KEY + 64];
    int kl = snprintf(k, sizeof k, INCARNATION_KEY "%s", name);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_META, k, (size_t) kl, &v, &vl);
    *out = rc == MT_OK && vl == 8 ? mt_get_be64(v) : 0;
    return rc == MT_ENOTFOUND ? MT_OK : rc;
}

static mt_err incarnation_next(mt_txn *t, const char *name)
{
    uint64_t n;
    mt_err rc = incarnation_get(t, name, &n);
    if (rc) {
        return rc;
    }
    char k[sizeof INCARNATION_KEY + 64];
    int kl = snprintf(k, sizeof k, INCARNATION_KEY "%s", name);
    uint8_t v[8];
    mt_put_be64(v, n + 1);
    return mt_store_put(t, MT_DB_META, k, (size_t) kl, v, 8, 0);
}

static mt_err dispatch_body(mt_txn *t, dispatch_job *dj);

static mt_err dispatch_run(mt_txn *t, void *arg)
{
    dispatch_job *dj = arg;
    mt_err rc = dispatch_body(t, dj);
    mt_store_cursor_close(dj->out.kv_cur); /* lent to the runs; closed before the job ends */
    dj->out.kv_cur = NULL;
    return rc;
}

static mt_err dispatch_body(mt_txn *t, dispatch_job *dj)
{
    sub_rt *s = dj->s;
    const mt_sub_conf *c = s->conf;
    dispatch_out *out = &dj->out;
    mt_spec_round *round = out->round;
    memset(out, 0, sizeof *out);
    out->round = round;
    out->write_max = mt_txn_job_max(t);
    mt_err rc = MT_OK;
    if (!s->incarnation_read) {
        rc = incarnation_get(t, c->name, &s->incarnation);
        s->incarnation_read = rc == MT_OK;
    }
    sub_state st;
    if (rc == MT_OK) {
        rc = load_state(t, c->name, &st);
    }
    if (rc == MT_OK && !st.exists) {
        rc = initial_cursor(t, c, &st.cursor);
    }
    out->cursor = st.cursor;
    if (rc == MT_OK && st.paused) {
        return st.exists ? MT_OK : save_state(t, c->name, &st);
    }
    /* Saved only if it changed: a job that found nothing makes no group to sync. */
    sub_state before = st;
    int budget = dj->budget;
    if (rc == MT_OK && !c->priority) {
        rc = run_due(s, t, &st, out, &budget);
    }
    bool strict_blocked = false;
    if (rc == MT_OK && c->ordering == MT_ORDER_STRICT && !c->priority) {
        rc = lane_busy(t, c->name, "", &strict_blocked);
    }
    bool any_parked = true;
    if (rc == MT_OK) {
        uint8_t pfx[KEY_MAX];
        size_t pl = name_prefix(pfx, c->name);
        const void *ck, *cv;
        size_t ckl, cvl;
        mt_err f = mt_store_first_with_prefix(t, MT_DB_PARKED, pfx, pl, pl, &ck, &ckl, &cv, &cvl);
        any_parked = f != MT_ENOTFOUND;
    }
    if (rc == MT_OK && !strict_blocked && budget > 0) {
        rc = scan_and_deliver(s, t, &st, out, budget, dj->upto, any_parked);
    }
    if (rc == MT_OK && c->priority) {
        rc = run_due(s, t, &st, out, &budget);
    }
    if (rc == MT_OK && (!st.exists || memcmp(&before, &st, sizeof st) != 0)) {
        rc = save_state(t, c->name, &st);
    }
    out->cursor = st.cursor;
    return rc;
}

/* ---- the registry (loop thread) ---- */

static void submit(sub_rt *s);
static bool spec_begin(sub_rt *s);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    submit(arg);
}

static void sub_release(sub_rt *s);

/*
 * Queues a writer job that uses 's', holding a reference until its done
 * callback calls sub_release. The caller frees its job on failure.
 */
static mt_err sub_submit(sub_rt *s, mt_store_job_fn run, mt_store_done_fn done, void *job)
{
    mt_err rc = mt_store_submit(s->subs->store, run, done, job);
    if (rc == MT_OK) {
        s->refs++;
    }
    return rc;
}

static void dispatch_settle(sub_rt *s, const dispatch_out *out, mt_err rc)
{
    mt_subs *subs = s->subs;
    const char *const tags[] = {"subscription", s->conf->name, NULL};
    int64_t now = mt_now_us();
    if (rc) {
        /*
         * A full store fails every job alike: one line when it starts or
         * changes, then one a minute, and appends wait for the timer
         * (submit) instead of each failing a job of its own.
         */
        if (rc != s->stalled) {
            s->stalled_since_us = now;
        }
        if (rc != s->stalled || now - s->stalled_logged_us >= STALL_LOG_US) {
            mt_diag_emit(MT_DIAG_ERROR, tags,
                         "subscription '%s': dispatch failed: %s; retrying every second",
                         s->conf->name, mt_err_str(rc));
            s->stalled_logged_us = now;
        }
        s->stalled = rc;
        struct timeval tv = {1, 0};
        evtimer_add(s->timer, &tv);
        return;
    }
    if (s->stalled) {
        mt_diag_emit(MT_DIAG_INFO, tags, "subscription '%s': dispatching again after %lld s",
                     s->conf->name, (long long) ((now - s->stalled_since_us) / 1000000));
        s->stalled = MT_OK;
    }
    if (out->appended) {
        /* Emitted events may be for other subscriptions, or long polls. */
        mt_subs_kick(subs);
        if (subs->on_append) {
            subs->on_append(subs->on_append_arg);
        }
    }
    if (out->next_due_us) {
        int64_t wait = out->next_due_us - mt_now_us();
        if (wait < 0) {
            wait = 0;
        }
        struct timeval tv = {(time_t) (wait / 1000000), (suseconds_t) (wait % 1000000)};
        evtimer_add(s->timer, &tv);
    }
    if (out->more || s->again || out->appended) {
        s->again = false;
        submit(s);
    }
}

static void dispatch_done(mt_err rc, void *arg)
{
    dispatch_job *dj = arg;
    sub_rt *s = dj->s;
    s->inflight--;
    if (rc == MT_OK && dj->out.more) {
        s->job_budget = dj->budget * 2 < EVENTS_PER_JOB_MAX ? dj->budget * 2 : EVENTS_PER_JOB_MAX;
    } else {
        s->job_budget = EVENTS_PER_JOB;
    }
    mt_spec_round *r = dj->out.round;
    if (rc == MT_OK && r && dj->out.cursor < mt_spec_round_end(r) && !s->subs->closing) {
        /*
         * The job stopped within its round (it wrote what one job may, a
         * strict subscription's message failed, a pause): the next job
         * applies the rest rather than the writer running it again.
         */
        memmove(s->ready + 1, s->ready, (size_t) s->nready * sizeof *s->ready);
        s->ready[0] = r;
        s->nready++;
    } else {
        mt_spec_round_free(r);
    }
    if (s->spec && s->ahead_conflicts != s->conflicts_seen) {
        /*
         * Some overlay was wrong (a key another subject wrote, a run that
         * failed here). A run again for an emit says nothing of the kind:
         * dropping the overlays then had the next round read what the
         * writer had not yet applied, and conflict, and so on.
         */
        s->conflicts_seen = s->ahead_conflicts;
        mt_spec_reset(s->spec);
        s->spec_reset = true;
    }
    dispatch_settle(s, &dj->out, rc);
    free(dj);
    sub_release(s);
}

/* ---- handlers run ahead on workers (mt_spec) ---- */

static uint32_t lane_hash(const char *lane)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *) lane; *p; p++) {
        h = (h ^ *p) * 16777619u;
    }
    return h;
}

/*
 * A round's plan, on worker k of n: the new events this subscription would
 * deliver now (as the dispatch job will see them), by lane, so each lane
 * is one worker's, in log order. Events waiting behind a busy lane, held
 * back or expired are left to the writer.
 */
static uint64_t spec_plan(mt_txn *snap, int worker, int n, uint64_t base, uint64_t span,
                          void *arg, bool (*run)(const mt_event *ev, void *ctx), void *ctx)
{
    sub_rt *s = arg;
    const mt_sub_conf *c = s->conf;
    uint8_t pfx[KEY_MAX];
    size_t pl = name_prefix(pfx, c->name);
    const void *k0, *v0;
    size_t kl0, vl0;
    bool any_parked = mt_store_first_with_prefix(snap, MT_DB_PARKED, pfx, pl, pl, &k0, &kl0, &v0,
                                                 &vl0) != MT_ENOTFOUND;
    mt_cursor *cur;
    if (mt_store_cursor_open(snap, MT_DB_LOG, &cur)) {
        return base;
    }
    uint8_t start[8];
    mt_put_be64(start, base + 1);
    const void *k, *v;
    size_t kl, vl;
    int matched = 0;
    uint64_t end = base;
    int64_t now = mt_now_us();
    mt_err crc = mt_store_cursor_seek(cur, start, 8, &k, &kl, &v, &vl);
    type_memo memo = {.known = false};
    for (; crc == MT_OK; crc = mt_store_cursor_next(cur, &k, &kl, &v, &vl)) {
        mt_event ev;
        if (mt_event_decode(v, vl, &ev) || ev.sequence > base + span) {
            break;
        }
        bool m = matches(s, &ev, &memo);
        if (m && ++matched > EVENTS_PER_JOB) {
            break;
        }
        end = ev.sequence;
        if (!m) {
            continue;
        }
        char lane[MAX_LANE + 1];
        lane_of(c, &ev, lane, sizeof lane);
        if (lane_hash(lane) % (uint32_t) n != (uint32_t) worker) {
            continue;
        }
        bool busy = false;
        if (any_parked && lane_ordered(lane) && lane_busy(snap, c->name, lane, &busy)) {
            break;
        }
        if (busy || ev.deliverafter_us > now || expired(c, &ev, now)) {
            continue;
        }
        if (!run(&ev, ctx)) {
            break;
        }
    }
    mt_store_cursor_close(cur);
    return end;
}

static void spec_done(mt_spec_round *round, void *arg)
{
    sub_rt *s = arg;
    s->spec_running = false;
    mt_assert(s->nready <= SPEC_READY_MAX); /* room for one a job gave back */
    s->ready[s->nready++] = round;
    if (mt_spec_round_end(round) > s->spec_end) {
        s->spec_end = mt_spec_round_end(round);
    }
    submit(s);
    sub_release(s);
}

/*
 * Starts a round over the events after both the subscription's position
 * and the last round, if there are any, it is not paused, no round is
 * running and fewer than SPEC_READY_MAX wait. It may run while a dispatch
 * job applies a round before. Returns whether one started.
 */
static bool spec_begin(sub_rt *s)
{
    if (s->spec_running || s->nready >= SPEC_READY_MAX ||
        (s->spec_reset && (s->nready || s->inflight))) {
        /*
         * After the overlays were dropped, a round would read from its
         * snapshot what the rounds still waiting write: it would conflict,
         * drop them again, and so on while there is a backlog.
         */
        return false;
    }
    mt_txn *t;
    if (mt_store_read_begin(s->subs->store, &t)) {
        s->spec_upto = UINT64_MAX; /* the writer takes what there is */
        return false;
    }
    sub_state st;
    uint64_t head = 0;
    mt_err rc = load_state(t, s->conf->name, &st);
    if (rc == MT_OK && !st.exists) {
        rc = initial_cursor(t, s->conf, &st.cursor);
    }
    if (rc == MT_OK) {
        rc = mt_log_head(t, &head);
    }
    mt_store_read_end(t);
    uint64_t from = st.cursor > s->spec_end ? st.cursor : s->spec_end;
    /* Without a round, what a job may take: a later event starts one. */
    s->spec_upto = rc ? UINT64_MAX : head;
    if (rc || st.paused || head <= from) {
        return false;
    }
    uint64_t span = head - from < SCANS_PER_JOB ? head - from : SCANS_PER_JOB;
    s->spec_running = true;
    s->spec_reset = false;
    s->refs++;
    mt_spec_start(s->spec, from, span, spec_plan, s, spec_done, s);
    return true;
}

/*
 * Outside its processing window a subscription submits nothing; returns
 * the seconds until the window opens (0 = inside, or no window).
 */
static int until_window(const mt_sub_conf *c)
{
    if (!c->has_window || c->window_from == c->window_to) {
        return 0;
    }
    int now = mt_seconds_of_day(c->window_tz, mt_now_us());
    bool inside = c->window_from < c->window_to
                      ? now >= c->window_from && now < c->window_to
                      : now >= c->window_from || now < c->window_to;
    return inside ? 0 : (c->window_from - now + 86400) % 86400;
}

static void submit(sub_rt *s)
{
    if (s->subs->closing || s->retired || s->deleting || s->conf->pull) {
        /* Pull subscriptions deliver only when a consumer asks. */
        return;
    }
    int wait = until_window(s->conf);
    if (wait > 0) {
        /* Messages wait durably; come back when the window opens. */
        struct timeval tv = {wait, 0};
        evtimer_add(s->timer, &tv);
        return;
    }
    if (s->stalled && evtimer_pending(s->timer, NULL)) {
        return; /* the last job failed: the retry timer submits the next */
    }
    if (s->spec) {
        /* Workers run ahead, also while a dispatch job applies their last round. */
        spec_begin(s);
    }
    if (s->inflight >= (s->spec ? 1 : DISPATCH_INFLIGHT) || (s->spec_running && !s->nready)) {
        /* The job in flight, or the round running, comes back here when done. */
        s->again = true;
        return;
    }
    dispatch_job *dj = mt_xcalloc(1, sizeof *dj);
    dj->s = s;
    dj->budget = s->job_budget;
    /*
     * With workers, new events wait for the round that runs them: a job
     * that took events past its round would run those on the writer, and
     * the next round would run them again for nothing. A job without a
     * round takes only what was there when none was needed (their append
     * starts one for the events after). If the round could not start, or
     * covered nothing (its snapshot failed), the writer takes what there is.
     */
    dj->upto = s->spec ? s->spec_upto : UINT64_MAX;
    if (s->nready) {
        mt_spec_round *r = s->ready[0];
        dj->out.round = r;
        dj->upto = mt_spec_round_covered(r) ? mt_spec_round_end(r) : UINT64_MAX;
        s->nready--;
        memmove(s->ready, s->ready + 1, (size_t) s->nready * sizeof *s->ready);
    }
    if (sub_submit(s, dispatch_run, dispatch_done, dj) == MT_OK) {
        s->inflight++;
        s->submitted_after = s->subs->appends_queued;
    } else {
        mt_spec_round_free(dj->out.round);
        free(dj);
    }
}

/* ---- the registry's lifecycle ---- */

static void sub_free(sub_rt *s)
{
    for (int i = 0; i < s->nready; i++) {
        mt_spec_round_free(s->ready[i]);
    }
    mt_spec_close(s->spec);
    if (s->timer) {
        event_free(s->timer);
    }
    if (s->handler) {
        s->subs->runner->close(s->handler);
    }
    mt_filter_free(s->filter);
    mt_sub_conf_free(s->conf);
    free(s->def);
    free(s);
}

/* A job that used 's' is done: a retired subscription goes with its last job. */
static void sub_release(sub_rt *s)
{
    mt_assert(s->refs > 0);
    if (--s->refs > 0 || !s->retired) {
        return;
    }
    mt_subs *subs = s->subs;
    for (sub_rt **p = &subs->retired; *p; p = &(*p)->next_retired) {
        if (*p == s) {
            *p = s->next_retired;
            break;
        }
    }
    sub_free(s);
}

/*
 * A subscription for 'conf' (taken over): its handler loaded, its filter
 * compiled. NULL with the reason in err if either fails.
 */
static sub_rt *sub_new(mt_subs *subs, mt_sub_conf *conf, const char *def, char *err,
                       size_t errlen)
{
    sub_rt *s = mt_xcalloc(1, sizeof *s);
    s->subs = subs;
    s->serial = ++subs->serials;
    s->conf = conf;
    s->def = def ? mt_xstrdup(def) : NULL;
    s->job_budget = EVENTS_PER_JOB;
    s->timer = evtimer_new(mt_loop_base(subs->loop), on_timer, s);
    char why[512] = "";
    if (!conf->pull && subs->runner->open(conf, &s->handler, why, sizeof why)) {
        snprintf(err, errlen, "subscription '%s': %s", conf->name, why);
        sub_free(s);
        return NULL;
    }
    if (conf->filter_json) {
        json_t *spec = json_loads(conf->filter_json, JSON_ALLOW_NUL, NULL);
        mt_err rc = mt_filter_compile(spec, &s->filter, why, sizeof why);
        json_decref(spec);
        if (rc) {
            snprintf(err, errlen, "subscription '%s': filter: %s", conf->name, why);
            sub_free(s);
            return NULL;
        }
    }
    if (!conf->pull && conf->workers > 1 &&
        mt_spec_open(subs->runner, conf, conf->workers, subs->store, subs->loop, &s->spec, err,
                     errlen)) {
        sub_free(s);
        return NULL;
    }
    return s;
}

static void registry_add(mt_subs *subs, sub_rt *s)
{
    if (subs->n == subs->cap) {
        subs->cap = subs->cap ? subs->cap * 2 : 8;
        subs->subs = mt_xrealloc(subs->subs, (size_t) subs->cap * sizeof *subs->subs);
    }
    subs->subs[subs->n++] = s;
}

/* Takes 's' out of the registry; it is freed once no job uses it. */
static void registry_retire(mt_subs *subs, sub_rt *s)
{
    for (int i = 0; i < subs->n; i++) {
        if (subs->subs[i] == s) {
            memmove(&subs->subs[i], &subs->subs[i + 1], (size_t) (subs->n - i - 1) * sizeof s);
            subs->n--;
            break;
        }
    }
    s->retired = true;
    evtimer_del(s->timer);
    if (s->refs == 0) {
        sub_free(s);
        return;
    }
    s->next_retired = subs->retired;
    subs->retired = s;
}

static sub_rt *find(mt_subs *subs, const char *name)
{
    for (int i = 0; i < subs->n; i++) {
        if (!subs->subs[i]->deleting && strcmp(subs->subs[i]->conf->name, name) == 0) {
            return subs->subs[i];
        }
    }
    return NULL;
}

/* Where 'name' is among the definitions that did not start, or -1. */
static int dormant_index(const mt_subs *subs, const char *name)
{
    for (int i = 0; i < subs->ndormant; i++) {
        if (strcmp(subs->dormant[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static void dormant_add(mt_subs *subs, const char *name, const char *why)
{
    subs->dormant = mt_xrealloc(subs->dormant, (size_t) (subs->ndormant + 1) * sizeof *subs->dormant);
    subs->dormant[subs->ndormant++] = (dormant_def){mt_xstrdup(name), mt_xstrdup(why)};
}

/* Forgets 'name' as not started: it was replaced or deleted. */
static void dormant_del(mt_subs *subs, const char *name)
{
    int i = dormant_index(subs, name);
    if (i < 0) {
        return;
    }
    free(subs->dormant[i].name);
    free(subs->dormant[i].why);
    subs->ndormant--;
    memmove(subs->dormant + i, subs->dormant + i + 1,
            (size_t) (subs->ndormant - i) * sizeof *subs->dormant);
}

/*
 * Loads the definitions made over HTTP. One whose name the topology now
 * declares gives way to it; one that no longer loads (its handler file
 * gone, say) is logged and left stored, so fixing the cause and restarting
 * brings it back.
 */
static void load_defs(mt_subs *subs)
{
    mt_txn *t;
    if (mt_store_read_begin(subs->store, &t)) {
        return;
    }
    mt_cursor *c;
    if (mt_store_cursor_open(t, MT_DB_SUBDEFS, &c)) {
        mt_store_read_end(t);
        return;
    }
    const void *k, *v;
    size_t kl, vl;
    mt_err rc = mt_store_cursor_seek(c, NULL, 0, &k, &kl, &v, &vl);
    for (; rc == MT_OK; rc = mt_store_cursor_next(c, &k, &kl, &v, &vl)) {
        char *name = mt_xstrndup(k, kl);
        char *def = mt_xstrndup(v, vl);
        char origin[128];
        snprintf(origin, sizeof origin, "definition of '%.64s'", name);
        if (find(subs, name)) {
            mt_diag_emit(MT_DIAG_WARN, (const char *const[]){"subscription", name, NULL},
                         "subscription '%s' is declared in %s; the definition made over HTTP "
                         "is not used", name, subs->topo_path ? subs->topo_path : "the topology");
            free(name);
            free(def);
            continue;
        }
        mt_topo_errs errs = {0};
        mt_sub_conf *conf;
        char err[600] = "";
        sub_rt *s = NULL;
        if (mt_topo_parse_sub(name, def, vl, origin, &conf, &errs) == MT_OK) {
            s = sub_new(subs, conf, def, err, sizeof err);
        } else {
            snprintf(err, sizeof err, "%s", errs.lines[0]);
        }
        if (s) {
            registry_add(subs, s);
        } else {
            mt_diag_emit(MT_DIAG_ERROR, (const char *const[]){"subscription", name, NULL},
                         "subscription '%s' (made over HTTP) is not started: %s", name, err);
            dormant_add(subs, name, err);
        }
        mt_topo_errs_free(&errs);
        free(name);
        free(def);
    }
    mt_store_cursor_close(c);
    mt_store_read_end(t);
}

mt_err mt_subs_open(mt_loop *loop, mt_store *store, const mt_topo *topo,
                    const mt_sub_runner *runner, mt_subs **out, char *err, size_t errlen)
{
    *out = NULL;
    mt_subs *subs = mt_xcalloc(1, sizeof *subs);
    subs->loop = loop;
    subs->store = store;
    subs->runner = runner;
    subs->topo_path = topo->path;
    for (int i = 0; i < topo->nsubs; i++) {
        sub_rt *s = sub_new(subs, mt_sub_conf_copy(&topo->subs[i]), NULL, err, errlen);
        if (!s) {
            mt_subs_close(subs);
            return MT_ECONFIG;
        }
        registry_add(subs, s);
    }
    load_defs(subs);
    *out = subs;
    return MT_OK;
}

void mt_subs_stop(mt_subs *subs)
{
    if (!subs) {
        return;
    }
    subs->closing = true;
    /* Workers read the store: they stop before it closes. */
    for (int i = 0; i < subs->n; i++) {
        mt_spec_stop(subs->subs[i]->spec);
    }
    for (sub_rt *s = subs->retired; s; s = s->next_retired) {
        mt_spec_stop(s->spec);
    }
}

void mt_subs_close(mt_subs *subs)
{
    if (!subs) {
        return;
    }
    subs->closing = true;
    while (subs->trials) {
        reload_trial *r = subs->trials;
        subs->trials = r->next;
        mt_trial_cancel(r->trial);
        free(r->name);
        free(r);
    }
    for (int i = 0; i < subs->n; i++) {
        sub_free(subs->subs[i]);
    }
    while (subs->retired) {
        sub_rt *s = subs->retired;
        subs->retired = s->next_retired;
        sub_free(s);
    }
    for (int i = 0; i < subs->npending; i++) {
        free(subs->pending[i]);
    }
    free(subs->pending);
    for (int i = 0; i < subs->ndormant; i++) {
        free(subs->dormant[i].name);
        free(subs->dormant[i].why);
    }
    free(subs->dormant);
    free(subs->subs);
    free(subs);
}

void mt_subs_kick(mt_subs *subs)
{
    mt_subs_kick_after(subs, UINT64_MAX); /* every job was queued before "that append" */
}

uint64_t mt_subs_prime(mt_subs *subs)
{
    if (!subs) {
        return 0;
    }
    uint64_t append = ++subs->appends_queued;
    for (int i = 0; i < subs->n; i++) {
        /*
         * Only a subscription with no job in flight: one that has jobs
         * going is busy, and more, smaller jobs would each pay a job's
         * fixed cost (state, lanes, cursor) for a few events. Workers run
         * ahead on what is committed: the append is not, yet.
         */
        sub_rt *s = subs->subs[i];
        if (!s->spec && s->inflight == 0) {
            submit(s);
        }
    }
    return append;
}

void mt_subs_kick_after(mt_subs *subs, uint64_t append)
{
    for (int i = 0; subs && i < subs->n; i++) {
        /* A job queued after the append runs after it (mt_store.h): it will see the events. */
        if (subs->subs[i]->submitted_after < append) {
            submit(subs->subs[i]);
        }
    }
    if (subs && subs->on_kick) {
        subs->on_kick(subs->on_kick_arg);
    }
}

void mt_subs_on_kick(mt_subs *subs, void (*cb)(void *arg), void *arg)
{
    subs->on_kick = cb;
    subs->on_kick_arg = arg;
}

void mt_subs_on_append(mt_subs *subs, void (*cb)(void *arg), void *arg)
{
    subs->on_append = cb;
    subs->on_append_arg = arg;
}

void mt_subs_on_change(mt_subs *subs, mt_sub_change_fn cb, void *arg)
{
    subs->on_change = cb;
    subs->on_change_arg = arg;
}

void mt_subs_each(mt_subs *subs, void (*fn)(const mt_sub_conf *conf, void *arg), void *arg)
{
    for (int i = 0; i < subs->n; i++) {
        fn(subs->subs[i]->conf, arg);
    }
}

const char *mt_subs_not_started(mt_subs *subs, const char *name)
{
    int i = find(subs, name) ? -1 : dormant_index(subs, name);
    return i < 0 ? NULL : subs->dormant[i].why;
}

bool mt_subs_has(mt_subs *subs, const char *name)
{
    return find(subs, name) != NULL;
}

/* Counts keys in 'db' that start with 'name NUL'. */
static uint64_t count_prefix(mt_txn *t, mt_db db, const char *name)
{
    uint8_t pfx[KEY_MAX];
    size_t pl = name_prefix(pfx, name);
    mt_cursor *c;
    uint64_t n = 0;
    if (mt_store_cursor_open(t, db, &c)) {
        return 0;
    }
    const void *k, *v;
    size_t kl, vl;
    mt_err rc = mt_store_cursor_seek(c, pfx, pl, &k, &kl, &v, &vl);
    while (rc == MT_OK && kl >= pl && memcmp(k, pfx, pl) == 0) {
        n++;
        rc = mt_store_cursor_next(c, &k, &kl, &v, &vl);
    }
    mt_store_cursor_close(c);
    return n;
}

/* A subscription's held messages, by why they are held. */
typedef struct parked_census {
    uint64_t retrying; /* failed, waiting for another attempt (a backoff, a nack's delay) */
    uint64_t leased;   /* out with a pull consumer or a webhook POST */
    uint64_t waiting;  /* behind their lane's head, until their time, queued by priority */
} parked_census;

/*
 * Counts 'name's held messages in one pass, reading each record's header
 * only. Messages held behind a retrying one are past the position, so
 * `lag` leaves them out; `waiting` is where they show.
 */
static parked_census census(mt_txn *t, const char *name)
{
    parked_census n = {0, 0, 0};
    uint8_t pfx[KEY_MAX];
    size_t pl = name_prefix(pfx, name);
    mt_cursor *c;
    if (mt_store_cursor_open(t, MT_DB_PARKED, &c)) {
        return n;
    }
    const void *k, *v;
    size_t kl, vl;
    mt_err rc = mt_store_cursor_seek(c, pfx, pl, &k, &kl, &v, &vl);
    while (rc == MT_OK && kl >= pl && memcmp(k, pfx, pl) == 0) {
        mt_park_state state;
        uint32_t attempts;
        if (mt_parked_peek(v, vl, &state, &attempts) == MT_OK) {
            if (state == MT_PARK_RETRY && attempts > 0) {
                n.retrying++;
            } else if (state == MT_PARK_LEASED) {
                n.leased++;
            } else {
                n.waiting++;
            }
        }
        rc = mt_store_cursor_next(c, &k, &kl, &v, &vl);
    }
    mt_store_cursor_close(c);
    return n;
}

/* The status fields kept in the store for subscription 'name'. */
static json_t *stored_status(mt_txn *t, const char *name, uint64_t head)
{
    sub_state st;
    load_state(t, name, &st);
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "position", json_integer((json_int_t) st.cursor));
    json_object_set_new(o, "head", json_integer((json_int_t) head));
    json_object_set_new(o, "lag", json_integer((json_int_t) (head > st.cursor ? head - st.cursor : 0)));
    json_object_set_new(o, "handled", json_integer((json_int_t) st.handled));
    json_object_set_new(o, "retried", json_integer((json_int_t) st.retried));
    json_object_set_new(o, "dead_lettered", json_integer((json_int_t) st.dead));
    json_object_set_new(o, "expired", json_integer((json_int_t) st.expired));
    json_object_set_new(o, "paused", json_boolean(st.paused));
    parked_census held = census(t, name);
    json_object_set_new(o, "retrying", json_integer((json_int_t) held.retrying));
    json_object_set_new(o, "waiting", json_integer((json_int_t) held.waiting));
    json_object_set_new(o, "leased", json_integer((json_int_t) held.leased));
    uint64_t dlq = st.dlq_known ? st.dlq : count_prefix(t, MT_DB_DLQ, name);
    json_object_set_new(o, "dlq", json_integer((json_int_t) dlq));
    json_t *le = NULL;
    if (st.last_error[0]) {
        /* Handlers' messages may hold bytes that are not UTF-8. */
        le = mt_diag_text(st.last_error, strlen(st.last_error));
    }
    json_object_set_new(o, "last_error", le ? le : json_null());
    return o;
}

/*
 * A definition made over HTTP that did not start: its stored state, why it
 * did not start, and its definition.
 */
static json_t *dormant_status(mt_subs *subs, int i, mt_txn *t, uint64_t head)
{
    const char *name = subs->dormant[i].name;
    json_t *o = stored_status(t, name, head);
    json_object_set_new(o, "running", json_false());
    json_t *why = json_string(subs->dormant[i].why);
    json_object_set_new(o, "not_started", why ? why : json_string("(not UTF-8)"));
    json_object_set_new(o, "in_flight", json_false());
    json_object_set_new(o, "origin", json_string("api"));
    const void *v;
    size_t vl;
    json_t *def = NULL;
    if (mt_store_get(t, MT_DB_SUBDEFS, name, strlen(name), &v, &vl) == MT_OK) {
        def = json_loadb(v, vl, JSON_ALLOW_NUL, NULL);
    }
    json_t *topics = json_object_get(def, "topics");
    json_object_set_new(o, "topics", json_is_array(topics) ? json_incref(topics) : json_array());
    if (def) {
        json_object_set_new(o, "definition", def);
    }
    return o;
}

static json_t *status_of(sub_rt *s, mt_txn *t, uint64_t head)
{
    json_t *o = stored_status(t, s->conf->name, head);
    json_object_set_new(o, "running", json_true());
    json_object_set_new(o, "in_flight", json_boolean(s->inflight > 0));
    if (s->stalled) {
        /* Not in the store: a full store cannot take it. */
        char why[160];
        snprintf(why, sizeof why, "dispatch failing for %lld s: %s; retried every second",
                 (long long) ((mt_now_us() - s->stalled_since_us) / 1000000),
                 mt_err_str(s->stalled));
        json_object_set_new(o, "last_error", json_string(why));
    }
    json_t *topics = json_array();
    for (int i = 0; i < s->conf->ntopics; i++) {
        json_array_append_new(topics, json_string(s->conf->topics[i]));
    }
    json_object_set_new(o, "topics", topics);
    json_object_set_new(o, "origin", json_string(s->def ? "api" : "config"));
    if (s->conf->workers > 1 && !s->conf->pull) {
        json_object_set_new(o, "workers", json_integer(s->conf->workers));
        json_object_set_new(o, "run_ahead", json_integer((json_int_t) s->ahead_used));
        json_object_set_new(o, "run_again", json_integer((json_int_t) s->ahead_rerun));
    }
    if (s->def) {
        json_t *def = json_loads(s->def, JSON_ALLOW_NUL, NULL);
        if (def) {
            json_object_set_new(o, "definition", def);
        }
    }
    return o;
}

mt_err mt_subs_status(mt_subs *subs, mt_txn *t, const char *name, json_t **out)
{
    *out = NULL;
    uint64_t head = 0;
    mt_log_head(t, &head);
    if (name) {
        sub_rt *s = find(subs, name);
        int d = s ? -1 : dormant_index(subs, name);
        if (!s && d < 0) {
            return MT_ENOTFOUND;
        }
        *out = s ? status_of(s, t, head) : dormant_status(subs, d, t, head);
        return MT_OK;
    }
    json_t *a = json_array();
    for (int i = 0; i < subs->n; i++) {
        json_array_append_new(a, status_of(subs->subs[i], t, head));
    }
    for (int i = 0; i < subs->ndormant; i++) {
        json_array_append_new(a, dormant_status(subs, i, t, head));
    }
    *out = a;
    return MT_OK;
}

mt_err mt_subs_dlq_list(mt_subs *subs, mt_txn *t, const char *name, uint64_t after,
                        uint64_t limit, json_t **out)
{
    *out = NULL;
    if (!find(subs, name) && dormant_index(subs, name) < 0) {
        return MT_ENOTFOUND; /* one that did not start can still be read */
    }
    uint8_t k[KEY_MAX];
    size_t pl = name_prefix(k, name);
    size_t kl = dlq_key(k, name, after + 1);
    mt_cursor *c;
    mt_err rc = mt_store_cursor_open(t, MT_DB_DLQ, &c);
    if (rc) {
        return rc;
    }
    json_t *a = json_array();
    const void *ck, *cv;
    size_t ckl, cvl;
    rc = mt_store_cursor_seek(c, k, kl, &ck, &ckl, &cv, &cvl);
    for (uint64_t n = 0; rc == MT_OK && n < limit; n++) {
        if (ckl != pl + 8 || memcmp(ck, k, pl) != 0) {
            break;
        }
        json_t *e = json_loadb(cv, cvl, 0, NULL);
        if (e) {
            json_array_append_new(a, e);
        }
        rc = mt_store_cursor_next(c, &ck, &ckl, &cv, &cvl);
    }
    mt_store_cursor_close(c);
    *out = a;
    return MT_OK;
}

/* ---- dead-letter maintenance jobs ---- */

typedef struct dlq_job {
    sub_rt *s;
    uint64_t seq;      /* 0 = all */
    bool redrive;      /* else purge */
    uint64_t count;    /* taken by this run of the job */
    uint64_t total;    /* ... and by the runs before it */
    bool more;         /* stopped at DLQ_PER_JOB or its write bound: run again */
    uint64_t upto;     /* the log head when the first run began: later events are not taken */
    uint64_t from;     /* where the next run looks: past every letter already taken */
    void (*done)(mt_err rc, uint64_t count, void *arg);
    void *arg;
} dlq_job;

static mt_err dlq_take(mt_txn *t, dlq_job *j);

/* Purges or redrives, and keeps the state's dead-letter count with it. */
static mt_err dlq_run(mt_txn *t, void *arg)
{
    dlq_job *j = arg;
    const char *name = j->s->conf->name;
    sub_state st;
    mt_err rc = load_state(t, name, &st);
    if (rc == MT_OK && !j->upto) {
        /* Dead letters of events appended after it began wait for another purge: it ends. */
        rc = mt_log_head(t, &j->upto);
    }
    if (rc == MT_OK) {
        dlq_count_known(t, name, &st);
        rc = dlq_take(t, j);
    }
    if (rc == MT_OK && j->count && st.exists) {
        st.dlq = st.dlq > j->count ? st.dlq - j->count : 0;
        rc = save_state(t, name, &st);
    }
    return rc;
}

static mt_err dlq_take(mt_txn *t, dlq_job *j)
{
    const char *name = j->s->conf->name;
    j->count = 0;
    j->more = false;
    uint8_t k[KEY_MAX];
    size_t pl = name_prefix(k, name);
    for (;;) {
        if (j->count >= DLQ_PER_JOB || mt_txn_job_bytes(t) > mt_txn_job_max(t) / 4) {
            j->more = true;
            return MT_OK;
        }
        /*
         * One pass in sequence order: a redriven event dead-lettered again
         * while the later runs wait (its letter has the same key) is behind
         * 'from', and is not redriven a second time by the same request.
         */
        size_t kl = dlq_key(k, name, j->seq ? j->seq : j->from);
        const void *ck, *cv;
        size_t ckl, cvl;
        mt_err rc = mt_store_first_with_prefix(t, MT_DB_DLQ, k, kl, pl, &ck, &ckl, &cv, &cvl);
        bool found = rc == MT_OK && ckl == pl + 8;
        uint64_t seq = found ? mt_get_be64((const uint8_t *) ck + pl) : 0;
        if (rc && rc != MT_ENOTFOUND) {
            return rc;
        }
        if (j->seq && (!found || seq != j->seq)) {
            /* Asked for by sequence: not there is an answer of its own (404), not 0 done. */
            return j->count ? MT_OK : MT_ENOTFOUND;
        }
        if (!found || seq > j->upto) {
            return MT_OK;
        }
        kl = dlq_key(k, name, seq);
        rc = mt_store_del(t, MT_DB_DLQ, k, kl);
        if (rc == MT_OK && j->redrive) {
            /* Back in as a retry due now: at the head of its lane if the lane is idle, else alone. */
            mt_event ev;
            rc = mt_log_get(t, seq, &ev);
            char lane[MAX_LANE + 1];
            snprintf(lane, sizeof lane, "#%llu", (unsigned long long) seq);
            if (rc == MT_OK) {
                lane_of(j->s->conf, &ev, lane, sizeof lane);
                if (lane_ordered(lane)) {
                    /* Keep it ahead of later events of its lane only if the lane is idle. */
                    bool busy;
                    rc = lane_busy(t, name, lane, &busy);
                    if (rc == MT_OK && busy) {
                        snprintf(lane, sizeof lane, "#%llu", (unsigned long long) seq);
                    }
                }
            }
            if (rc == MT_OK) {
                /* Asked for by hand: delivered even if its ttl or expirytime has passed. */
                mt_parked back;
                mt_parked_init(&back);
                back.redriven = true;
                rc = schedule_head(j->s, t, lane, seq, &back, mt_now_us());
            }
        }
        if (rc) {
            return rc;
        }
        j->count++;
        j->from = seq + 1;
        if (j->seq) {
            return MT_OK;
        }
    }
}

/*
 * A purge or redrive of every dead letter runs in jobs of DLQ_PER_JOB at
 * most: in one job, a million of them held the writer (and every publish)
 * for 1.3 s, and more than the write-ahead file takes (about 2.4 million
 * with 64 MiB) failed whole with "too big".
 */
static void dlq_done(mt_err rc, void *arg)
{
    dlq_job *j = arg;
    sub_rt *s = j->s;
    if (rc == MT_OK && j->redrive && j->count) {
        submit(s);
    }
    j->total += rc == MT_OK ? j->count : 0;
    if (rc == MT_OK && j->more) {
        rc = sub_submit(s, dlq_run, dlq_done, j);
        if (rc == MT_OK) {
            sub_release(s); /* the next run holds its own reference */
            return;
        }
    }
    j->done(rc, j->total, j->arg);
    sub_release(s);
    free(j);
}

static mt_err dlq_submit(mt_subs *subs, const char *name, uint64_t seq, bool redrive,
                         void (*done)(mt_err rc, uint64_t count, void *arg), void *arg)
{
    sub_rt *s = find(subs, name);
    if (!s) {
        return MT_ENOTFOUND;
    }
    dlq_job *j = mt_xcalloc(1, sizeof *j);
    j->s = s;
    j->seq = seq;
    j->redrive = redrive;
    j->done = done;
    j->arg = arg;
    mt_err rc = sub_submit(s, dlq_run, dlq_done, j);
    if (rc) {
        free(j);
    }
    return rc;
}

mt_err mt_subs_dlq_redrive(mt_subs *subs, const char *name, uint64_t seq,
                           void (*done)(mt_err rc, uint64_t count, void *arg), void *arg)
{
    return dlq_submit(subs, name, seq, true, done, arg);
}

mt_err mt_subs_dlq_purge(mt_subs *subs, const char *name, uint64_t seq,
                         void (*done)(mt_err rc, uint64_t count, void *arg), void *arg)
{
    return dlq_submit(subs, name, seq, false, done, arg);
}

/* ---- pause and resume ---- */

typedef struct pause_job {
    sub_rt *s;
    bool pause;
    void (*done)(mt_err rc, uint64_t count, void *arg);
    void *arg;
} pause_job;

static mt_err pause_run(mt_txn *t, void *arg)
{
    pause_job *j = arg;
    sub_state st;
    mt_err rc = load_state(t, j->s->conf->name, &st);
    if (rc == MT_OK && !st.exists) {
        rc = initial_cursor(t, j->s->conf, &st.cursor);
    }
    if (rc == MT_OK) {
        st.paused = j->pause;
        rc = save_state(t, j->s->conf->name, &st);
    }
    return rc;
}

static void pause_done(mt_err rc, void *arg)
{
    pause_job *j = arg;
    if (rc == MT_OK && !j->pause) {
        submit(j->s);
    }
    j->done(rc, 0, j->arg);
    sub_release(j->s);
    free(j);
}

mt_err mt_subs_pause(mt_subs *subs, const char *name, bool pause,
                     void (*done)(mt_err rc, uint64_t count, void *arg), void *arg)
{
    sub_rt *s = find(subs, name);
    if (!s) {
        return MT_ENOTFOUND;
    }
    pause_job *j = mt_xcalloc(1, sizeof *j);
    *j = (pause_job){s, pause, done, arg};
    mt_err rc = sub_submit(s, pause_run, pause_done, j);
    if (rc) {
        free(j);
    }
    return rc;
}

/* ---- pull consumers ---- */

/*
 * A leased message is the parked head of its lane with state "leased", its
 * lease token and its attempts; the time index holds its lease expiry, so
 * an expired lease comes back to the next pull (a nack's delay works the
 * same way). Tokens are "SEQ-NONCE": the nonce changes with every pull, so
 * a consumer holding an old lease cannot ack a redelivered message.
 */
typedef struct pull_job {
    sub_rt *s;
    uint32_t max;
    json_t *out;              /* [{"lease": token, "event": {...}}] */
    int64_t next_due_us;      /* when something queued falls due, 0 = nothing waits */
    uint64_t nonce;           /* random, drawn per job: the lease tokens' second half */
    mt_pull_done_fn done;
    void *arg;
    int closed_for;           /* seconds until the window opens (loop thread: mt_seconds_of_day) */
} pull_job;

/*
 * A message still leased when it falls due is one whose lease expired with
 * neither an ack nor a nack: that attempt failed, and its dead letter says
 * so beside the errors the nacks gave. (Its token stayed good until now.)
 */
static void lease_ran_out(const mt_sub_conf *c, mt_parked *rec)
{
    if (rec->state != MT_PARK_LEASED) {
        return;
    }
    char why[96];
    int n = snprintf(why, sizeof why, "the lease of %llu ms ran out without an ack or a nack",
                     (unsigned long long) c->lease_ms);
    mt_parked_add_error(rec, text_entry(rec->attempts, why, (size_t) n), ERRORS_KEPT);
}

/* Leases 'ev' (parked record 'rec', updated here) to the pull job 'j'. */
static mt_err lease(sub_rt *s, mt_txn *t, const mt_event *ev, mt_parked *rec, const char *lane,
                    pull_job *j)
{
    const mt_sub_conf *c = s->conf;
    /* One random draw per pull job; each lease of the job adds its index. */
    rec->lease = j->nonce + json_array_size(j->out);
    rec->attempts++;
    rec->state = MT_PARK_LEASED;
    rec->due_us = mt_now_us() + (int64_t) c->lease_ms * 1000;
    snprintf(rec->lane, sizeof rec->lane, "%s", lane);
    uint8_t k[KEY_MAX], sk[KEY_MAX];
    size_t kl = parked_key(k, c->name, lane, ev->sequence);
    size_t skl = sched_key(sk, c->name, rec->due_us, ev->sequence);
    mt_err rc = parked_put(t, k, kl, rec);
    if (rc == MT_OK) {
        rc = mt_store_put(t, MT_DB_SCHED, sk, skl, k, kl, 0);
    }
    if (rc == MT_OK) {
        /* The event's text is added on the loop thread (pull_done), off the writer. */
        char token[64];
        mt_parked_token(ev->sequence, rec->lease, token, sizeof token);
        json_t *item = json_object();
        json_object_set_new_nocheck(item, "lease", json_string_nocheck(token));
        json_object_set_new_nocheck(item, "attempt", json_integer((json_int_t) rec->attempts));
        json_object_set_new_nocheck(item, "sequence", json_integer((json_int_t) ev->sequence));
        json_array_append_new(j->out, item);
    }
    return rc;
}

/* Drops an expired or exhausted message from the pull queue; the next of its lane moves up. */
static mt_err pull_retire(sub_rt *s, mt_txn *t, const mt_event *ev, const mt_parked *rec,
                          const char *lane, const char *why, bool dead, sub_state *st)
{
    uint8_t k[KEY_MAX];
    size_t kl = parked_key(k, s->conf->name, lane, ev->sequence);
    mt_err rc = mt_store_del(t, MT_DB_PARKED, k, kl);
    if (rc == MT_ENOTFOUND) {
        rc = MT_OK;
    }
    if (rc == MT_OK && dead) {
        rc = dead_letter(s, t, ev, rec, why, st);
    }
    if (rc == MT_OK) {
        rc = requeue_next(s, t, lane);
    }
    return rc;
}

/*
 * A new event for a pull subscription: leased at once (or, with priority,
 * queued) when its lane is free; parked behind the lane's head otherwise,
 * so one subject's events are out one at a time, in order.
 */
static mt_err pull_admit(sub_rt *s, mt_txn *t, const mt_event *ev, pull_job *j, bool *any_parked)
{
    char lane[MAX_LANE + 1];
    lane_of(s->conf, ev, lane, sizeof lane);
    bool busy = false;
    mt_err rc = MT_OK;
    if (*any_parked && lane_ordered(lane)) {
        rc = lane_busy(t, s->conf->name, lane, &busy);
    }
    if (rc) {
        return rc;
    }
    *any_parked = true;
    if (busy) {
        return park_blocked(s, t, lane, ev->sequence);
    }
    if (ev->deliverafter_us > mt_now_us()) {
        return schedule_head(s, t, lane, ev->sequence, NULL, ev->deliverafter_us);
    }
    if (s->conf->priority) {
        return schedule_head(s, t, lane, ev->sequence, NULL, queue_due(ev));
    }
    mt_parked rec;
    mt_parked_init(&rec);
    return lease(s, t, ev, &rec, lane, j);
}

static mt_err pull_run(mt_txn *t, void *arg)
{
    pull_job *j = arg;
    sub_rt *s = j->s;
    const mt_sub_conf *c = s->conf;
    json_array_clear(j->out);
    j->next_due_us = 0;
    RAND_bytes((unsigned char *) &j->nonce, sizeof j->nonce);
    sub_state st;
    mt_err rc = load_state(t, c->name, &st);
    if (rc == MT_OK && !st.exists) {
        rc = initial_cursor(t, c, &st.cursor);
    }
    if (rc == MT_OK && st.paused) {
        return MT_OK; /* paused: nothing is handed out; leases still settle */
    }
    int64_t now = mt_now_us();
    if (rc == MT_OK && j->closed_for > 0) {
        /* Outside its window: nothing is handed out (webhooks included); leases still settle. */
        j->next_due_us = now + (int64_t) j->closed_for * 1000000;
        return st.exists ? MT_OK : save_state(t, c->name, &st);
    }
    uint8_t pfx[KEY_MAX];
    size_t pl = name_prefix(pfx, c->name);
    bool any_parked = true;
    if (rc == MT_OK) {
        const void *ck, *cv;
        size_t ckl, cvl;
        any_parked = mt_store_first_with_prefix(t, MT_DB_PARKED, pfx, pl, pl, &ck, &ckl, &cv,
                                                &cvl) != MT_ENOTFOUND;
    }
    /*
     * With priority, new events are first queued in the time index
     * (queue_due), which then hands them out highest priority first.
     */
    if (rc == MT_OK && c->priority) {
        mt_cursor *cur;
        rc = mt_store_cursor_open(t, MT_DB_LOG, &cur);
        uint8_t start[8];
        mt_put_be64(start, st.cursor + 1);
        const void *k, *v;
        size_t kl, vl;
        mt_err crc = rc ? rc : mt_store_cursor_seek(cur, start, 8, &k, &kl, &v, &vl);
        type_memo memo = {.known = false};
        for (int scans = 0; rc == MT_OK && crc == MT_OK && scans < SCANS_PER_JOB; scans++) {
            mt_event ev;
            if (mt_event_decode(v, vl, &ev)) {
                rc = MT_EIO;
                break;
            }
            st.cursor = ev.sequence;
            if (matches(s, &ev, &memo)) {
                rc = pull_admit(s, t, &ev, j, &any_parked);
            }
            if (rc == MT_OK) {
                crc = mt_store_cursor_next(cur, &k, &kl, &v, &vl);
            }
        }
        mt_store_cursor_close(cur);
    }
    if (rc == MT_OK && c->priority) {
        rc = promote_due(s, t, now);
    }
    /* First what is queued or came back: expired leases, nacks whose delay passed. */
    while (rc == MT_OK && json_array_size(j->out) < j->max) {
        uint8_t pk[KEY_MAX];
        size_t pkl;
        mt_parked rec;
        rc = take_due(t, pfx, pl, pl, now, pk, &pkl, &rec, &j->next_due_us);
        if (rc == MT_ENOTFOUND) {
            /* The next embargo, lease expiry or nack delay: a waiting puller looks again then. */
            rc = MT_OK;
            break;
        }
        if (rc) {
            break;
        }
        char lane[MAX_LANE + 1];
        mt_event ev;
        void *buf;
        lease_ran_out(c, &rec);
        rc = load_event(t, mt_get_be64(pk + pkl - 8), &ev, &buf);
        if (rc == MT_OK) {
            if (rec.lane[0] || (c->ordering == MT_ORDER_STRICT && !c->priority)) {
                snprintf(lane, sizeof lane, "%s", rec.lane);
            } else {
                snprintf(lane, sizeof lane, "#%llu", (unsigned long long) ev.sequence);
            }
            if (!rec.redriven && expired(c, &ev, now)) {
                st.expired++;
                rc = pull_retire(s, t, &ev, &rec, lane, "expired", c->expiry_dead_letter, &st);
            } else if (rec.attempts >= c->max_attempts) {
                st.dead++;
                rc = pull_retire(s, t, &ev, &rec, lane, "retries exhausted", true, &st);
            } else if (ev.deliverafter_us > now) {
                /* It moved up its lane before its deliverafter time. */
                rc = schedule_head(s, t, lane, ev.sequence, &rec, ev.deliverafter_us);
            } else {
                st.retried += rec.attempts > 0; /* a first lease of a queued event is no retry */
                rc = lease(s, t, &ev, &rec, lane, j);
            }
            free(buf);
        }
        mt_parked_free(&rec);
    }
    /* Then new events after the cursor (with priority, the scan above took them). */
    if (rc == MT_OK && !c->priority && json_array_size(j->out) < j->max) {
        mt_cursor *cur;
        rc = mt_store_cursor_open(t, MT_DB_LOG, &cur);
        uint8_t start[8];
        mt_put_be64(start, st.cursor + 1);
        const void *k, *v;
        size_t kl, vl;
        mt_err crc = rc ? rc : mt_store_cursor_seek(cur, start, 8, &k, &kl, &v, &vl);
        int scans = 0;
        type_memo memo = {.known = false};
        while (rc == MT_OK && crc == MT_OK && json_array_size(j->out) < j->max &&
               ++scans <= SCANS_PER_JOB) {
            mt_event ev;
            if (mt_event_decode(v, vl, &ev)) {
                rc = MT_EIO;
                break;
            }
            st.cursor = ev.sequence;
            if (matches(s, &ev, &memo)) {
                if (expired(c, &ev, now)) {
                    st.expired++;
                    if (c->expiry_dead_letter) {
                        mt_parked none;
                        mt_parked_init(&none);
                        rc = dead_letter(s, t, &ev, &none, "expired", &st);
                    }
                } else {
                    rc = pull_admit(s, t, &ev, j, &any_parked);
                }
            }
            if (rc == MT_OK) {
                crc = mt_store_cursor_next(cur, &k, &kl, &v, &vl);
            }
        }
        mt_store_cursor_close(cur);
    }
    if (rc == MT_OK) {
        rc = save_state(t, c->name, &st);
    }
    return rc;
}

/*
 * Adds each leased event's exact JSON text ("raw": data byte for byte),
 * read back after the job committed, here on the loop thread.
 */
static mt_err add_raw(mt_store *store, json_t *items)
{
    if (json_array_size(items) == 0) {
        return MT_OK;
    }
    mt_txn *t;
    mt_err rc = mt_store_read_begin(store, &t);
    size_t i;
    json_t *item;
    mt_buf b;
    mt_buf_init(&b);
    json_array_foreach(items, i, item) {
        mt_event ev;
        if (rc || (rc = mt_log_get(t, (uint64_t) json_integer_value(json_object_get(item, "sequence")),
                                   &ev))) {
            break;
        }
        b.len = 0;
        mt_event_to_json(&ev, &b);
        /* mt_event_to_json writes UTF-8 only: no need to check it again. */
        json_object_set_new_nocheck(item, "raw", json_stringn_nocheck(b.data, b.len));
    }
    mt_buf_free(&b);
    mt_store_read_end(t);
    return rc;
}

static void pull_done(mt_err rc, void *arg)
{
    pull_job *j = arg;
    if (rc == MT_OK) {
        rc = add_raw(j->s->subs->store, j->out);
    }
    json_t *res = rc ? NULL : json_pack("{sOsI}", "items", j->out, "next_due_us",
                                        (json_int_t) j->next_due_us);
    j->done(rc, res, j->arg);
    json_decref(res);
    json_decref(j->out);
    sub_release(j->s);
    free(j);
}

mt_err mt_subs_pull(mt_subs *subs, const char *name, uint32_t max, mt_pull_done_fn done,
                    void *arg)
{
    sub_rt *s = find(subs, name);
    if (!s) {
        return MT_ENOTFOUND;
    }
    if (!s->conf->pull) {
        return MT_EINVAL;
    }
    pull_job *j = mt_xcalloc(1, sizeof *j);
    *j = (pull_job){.s = s,
                    .max = max,
                    .out = json_array(),
                    .done = done,
                    .arg = arg,
                    .closed_for = until_window(s->conf)};
    mt_err rc = sub_submit(s, pull_run, pull_done, j);
    if (rc) {
        json_decref(j->out);
        free(j);
    }
    return rc;
}

typedef struct lease_job {
    sub_rt *s;
    mt_lease_op op;
    json_t *tokens;           /* owned array of strings */
    uint64_t delay_ms;
    char *error;              /* owned: why a nack's attempt failed, or NULL */
    json_t *unknown;          /* tokens that match no live lease */
    uint64_t count;
    bool noted;               /* a nack's error went into the state's last_error */
    mt_pull_done_fn done;
    void *arg;
} lease_job;

/*
 * The parked record of leased message 'seq' into 'rec': in the lane its
 * event belongs to, or in a lane of its own ("#SEQ": a redrive that found
 * its lane busy). Sets lane and the record's key k (KEY_MAX bytes).
 * MT_ENOTFOUND if there is none.
 */
static mt_err find_lease(sub_rt *s, mt_txn *t, uint64_t seq, char *lane, uint8_t *k, size_t *kl,
                         mt_parked *rec)
{
    mt_event ev;
    mt_parked_init(rec);
    mt_err rc = mt_log_get(t, seq, &ev);
    if (rc) {
        return rc;
    }
    lane_of(s->conf, &ev, lane, MAX_LANE + 1);
    *kl = parked_key(k, s->conf->name, lane, seq);
    rc = parked_load(t, k, *kl, rec);
    if (rc == MT_ENOTFOUND && lane_ordered(lane)) {
        snprintf(lane, MAX_LANE + 1, "#%llu", (unsigned long long) seq);
        *kl = parked_key(k, s->conf->name, lane, seq);
        rc = parked_load(t, k, *kl, rec);
    }
    return rc;
}

static mt_err lease_run(mt_txn *t, void *arg)
{
    lease_job *j = arg;
    sub_rt *s = j->s;
    const char *name = s->conf->name;
    json_array_clear(j->unknown);
    j->count = 0;
    sub_state st;
    mt_err rc = load_state(t, name, &st);
    size_t i;
    json_t *tok;
    json_array_foreach(j->tokens, i, tok) {
        if (rc) {
            break;
        }
        const char *token = json_string_value(tok);
        uint64_t seq = token ? strtoull(token, NULL, 10) : 0;
        char lane[MAX_LANE + 1];
        uint8_t k[KEY_MAX];
        size_t kl = 0;
        mt_parked rec;
        mt_parked_init(&rec); /* freed below also when no lease was looked up */
        mt_err f = seq ? find_lease(s, t, seq, lane, k, &kl, &rec) : MT_ENOTFOUND;
        char have[64] = "";
        if (f == MT_OK && rec.state == MT_PARK_LEASED) {
            mt_parked_token(seq, rec.lease, have, sizeof have);
        }
        if (f != MT_OK && f != MT_ENOTFOUND && f != MT_EIO) {
            rc = f;
        }
        if (!have[0] || strcmp(have, token) != 0) {
            if (f == MT_EIO) {
                mt_diag_emit(MT_DIAG_ERROR, (const char *const[]){"subscription", name, NULL},
                             "subscription '%s': the parked record of event %llu is unreadable",
                             name, (unsigned long long) seq);
            }
            json_array_append(j->unknown, tok);
            mt_parked_free(&rec);
            continue;
        }
        uint8_t sk[KEY_MAX];
        size_t skl = sched_key(sk, name, rec.due_us, seq);
        rc = mt_store_del(t, MT_DB_SCHED, sk, skl);
        if (rc == MT_ENOTFOUND) {
            rc = MT_OK;
        }
        if (rc == MT_OK && j->op == MT_LEASE_ACK) {
            rc = mt_store_del(t, MT_DB_PARKED, k, kl);
            if (rc == MT_OK) {
                rc = requeue_next(s, t, lane);
            }
            st.handled++;
        } else if (rc == MT_OK) {
            int64_t ndue = mt_now_us() + (j->op == MT_LEASE_NACK ? (int64_t) j->delay_ms * 1000
                                                                  : (int64_t) s->conf->lease_ms * 1000);
            rec.due_us = ndue;
            if (j->op == MT_LEASE_NACK) {
                rec.state = MT_PARK_RETRY;
                rec.lease = 0;
                if (j->error) {
                    size_t n = strlen(j->error);
                    mt_parked_add_error(&rec, text_entry(rec.attempts, j->error, n),
                                        ERRORS_KEPT);
                    snprintf(st.last_error, sizeof st.last_error, "sequence %llu: %.*s",
                             (unsigned long long) seq,
                             (int) mt_diag_cut_at(j->error, n, sizeof st.last_error - 32),
                             j->error);
                    j->noted = true;
                }
            }
            rc = parked_put(t, k, kl, &rec);
            skl = sched_key(sk, name, ndue, seq);
            if (rc == MT_OK) {
                rc = mt_store_put(t, MT_DB_SCHED, sk, skl, k, kl, 0);
            }
        }
        mt_parked_free(&rec);
        j->count += rc == MT_OK;
    }
    if (rc == MT_OK && ((j->op == MT_LEASE_ACK && j->count) || j->noted)) {
        rc = save_state(t, name, &st);
    }
    return rc;
}

static void lease_done(mt_err rc, void *arg)
{
    lease_job *j = arg;
    json_t *o = NULL;
    if (rc == MT_OK) {
        o = json_object();
        json_object_set_new(o, "count", json_integer((json_int_t) j->count));
        json_object_set(o, "unknown", j->unknown);
    }
    j->done(rc, o, j->arg);
    json_decref(o);
    json_decref(j->tokens);
    json_decref(j->unknown);
    free(j->error);
    sub_release(j->s);
    free(j);
}

mt_err mt_subs_lease_op(mt_subs *subs, const char *name, mt_lease_op op, const json_t *tokens,
                        uint64_t delay_ms, const char *error, mt_pull_done_fn done, void *arg)
{
    sub_rt *s = find(subs, name);
    if (!s) {
        return MT_ENOTFOUND;
    }
    if (!s->conf->pull) {
        return MT_EINVAL;
    }
    lease_job *j = mt_xcalloc(1, sizeof *j);
    *j = (lease_job){.s = s, .op = op, .tokens = json_deep_copy(tokens), .delay_ms = delay_ms,
                     .error = op == MT_LEASE_NACK && error ? mt_xstrdup(error) : NULL,
                     .unknown = json_array(), .done = done, .arg = arg};
    mt_err rc = sub_submit(s, lease_run, lease_done, j);
    if (rc) {
        json_decref(j->tokens);
        json_decref(j->unknown);
        free(j->error);
        free(j);
    }
    return rc;
}

bool mt_subs_is_pull(mt_subs *subs, const char *name)
{
    sub_rt *s = find(subs, name);
    return s && s->conf->pull;
}

/* ---- definitions made over HTTP ---- */

static int pending_index(mt_subs *subs, const char *name)
{
    for (int i = 0; i < subs->npending; i++) {
        if (strcmp(subs->pending[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

static void pending_add(mt_subs *subs, const char *name)
{
    subs->pending = mt_xrealloc(subs->pending, (size_t) (subs->npending + 1) * sizeof *subs->pending);
    subs->pending[subs->npending++] = mt_xstrdup(name);
}

static void pending_del(mt_subs *subs, const char *name)
{
    int i = pending_index(subs, name);
    if (i >= 0) {
        free(subs->pending[i]);
        subs->pending[i] = subs->pending[--subs->npending];
    }
}

/* Deletes every key of 'db' that starts with 'name NUL'. */
static mt_err del_prefix(mt_txn *t, mt_db db, const char *name)
{
    uint8_t pfx[KEY_MAX];
    size_t pl = name_prefix(pfx, name);
    for (;;) {
        const void *ck, *cv;
        size_t ckl, cvl;
        mt_err rc = mt_store_first_with_prefix(t, db, pfx, pl, pl, &ck, &ckl, &cv, &cvl);
        if (rc == MT_ENOTFOUND) {
            return MT_OK;
        }
        if (rc) {
            return rc;
        }
        void *k = mt_xmalloc(ckl);
        memcpy(k, ck, ckl);
        rc = mt_store_del(t, db, k, ckl);
        free(k);
        if (rc) {
            return rc;
        }
    }
}

/* Forgets everything delivery kept for 'name': position, counters, parked messages, dead letters. */
static mt_err clear_state(mt_txn *t, const char *name)
{
    mt_err rc = mt_store_del(t, MT_DB_SUBS, name, strlen(name));
    if (rc == MT_ENOTFOUND) {
        rc = MT_OK;
    }
    if (rc == MT_OK) {
        rc = del_prefix(t, MT_DB_PARKED, name);
    }
    if (rc == MT_OK) {
        rc = del_prefix(t, MT_DB_SCHED, name);
    }
    if (rc == MT_OK) {
        rc = del_prefix(t, MT_DB_DLQ, name);
    }
    return rc;
}

typedef struct def_job {
    mt_subs *subs;
    char *name;               /* owned */
    char *def;                /* owned; NULL = delete */
    sub_rt *fresh;            /* put: the subscription that takes over */
    sub_rt *victim;           /* delete: the subscription going (a reference) */
    bool created;
    bool reload;              /* 'fresh' is the same definition with its handler loaded again */
    mt_pull_done_fn done;
    void *arg;
} def_job;

static mt_err def_run(mt_txn *t, void *arg)
{
    def_job *j = arg;
    if (j->reload) {
        return MT_OK; /* nothing stored changes: the job only orders the swap after earlier ones */
    }
    if (!j->def) {
        mt_err rc = mt_store_del(t, MT_DB_SUBDEFS, j->name, strlen(j->name));
        if (rc == MT_OK || rc == MT_ENOTFOUND) {
            rc = incarnation_next(t, j->name);
        }
        return rc ? rc : clear_state(t, j->name);
    }
    mt_err rc = mt_store_put(t, MT_DB_SUBDEFS, j->name, strlen(j->name), j->def, strlen(j->def), 0);
    if (rc == MT_OK && j->created) {
        /* A new subscription starts afresh, whatever an earlier one of that name left. */
        sub_state st;
        rc = load_state(t, j->name, &st);
        if (rc == MT_OK && st.exists) {
            rc = incarnation_next(t, j->name); /* one from the topology file was here */
        }
        memset(&st, 0, sizeof st);
        if (rc == MT_OK) {
            rc = incarnation_get(t, j->name, &j->fresh->incarnation);
            j->fresh->incarnation_read = true;
        }
        if (rc == MT_OK) {
            rc = clear_state(t, j->name);
        }
        if (rc == MT_OK) {
            rc = initial_cursor(t, j->fresh->conf, &st.cursor);
        }
        if (rc == MT_OK) {
            rc = save_state(t, j->name, &st);
        }
    }
    return rc;
}

static void def_done(mt_err rc, void *arg)
{
    def_job *j = arg;
    mt_subs *subs = j->subs;
    pending_del(subs, j->name);
    if (rc == MT_OK) {
        dormant_del(subs, j->name); /* replaced or deleted */
    }
    json_t *result = NULL;
    if (rc == MT_OK && (j->def || j->reload)) {
        sub_rt *old = find(subs, j->name);
        if (old) {
            registry_retire(subs, old);
        }
        registry_add(subs, j->fresh);
        if (subs->on_change) {
            subs->on_change(j->name, j->fresh->conf, subs->on_change_arg);
        }
        submit(j->fresh);
        j->fresh = NULL;
        result = json_pack("{sb}", "created", j->created);
    } else if (rc == MT_OK) {
        result = json_pack("{sb}", "deleted", 1);
    }
    if (j->victim) {
        sub_rt *v = j->victim;
        if (rc == MT_OK) {
            registry_retire(subs, v);
            if (subs->on_change) {
                subs->on_change(j->name, NULL, subs->on_change_arg);
            }
        } else {
            /* Nothing was deleted: it goes on as before. */
            v->deleting = false;
            submit(v);
        }
        sub_release(v);
    }
    if (j->fresh) {
        sub_free(j->fresh);
    }
    j->done(rc, result, j->arg);
    json_decref(result);
    free(j->name);
    free(j->def);
    free(j);
}

static reload_trial **trial_find(mt_subs *subs, const char *name)
{
    reload_trial **p = &subs->trials;
    while (*p && strcmp((*p)->name, name) != 0) {
        p = &(*p)->next;
    }
    return p;
}

/* Ends the trial of a reload of 'name', if one runs, saying why it was dropped. */
static void trial_drop(mt_subs *subs, const char *name, mt_diag_level level, const char *why)
{
    reload_trial **p = trial_find(subs, name);
    reload_trial *r = *p;
    if (!r) {
        return;
    }
    *p = r->next;
    mt_trial_cancel(r->trial);
    mt_diag_emit(level, (const char *const[]){"subscription", name, NULL}, "subscription '%s': %s",
                 name, why);
    free(r->name);
    free(r);
}

static mt_err def_submit(mt_subs *subs, def_job *j)
{
    mt_err rc = mt_store_submit(subs->store, def_run, def_done, j);
    if (rc) {
        if (j->fresh) {
            sub_free(j->fresh);
        }
        free(j->name);
        free(j->def);
        free(j);
        return rc;
    }
    pending_add(subs, j->name);
    if (!j->reload) {
        trial_drop(subs, j->name, MT_DIAG_WARN,
                   "handler not reloaded: the subscription is being changed or deleted");
    }
    return MT_OK;
}

static void __attribute__((format(printf, 2, 3))) add_err(mt_topo_errs *errs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[700];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errs->lines = mt_xrealloc(errs->lines, (size_t) (errs->count + 1) * sizeof *errs->lines);
    errs->lines[errs->count++] = mt_xstrdup(msg);
}

/* May 'name' be changed over HTTP now? Else MT_EEXISTS with the reason. */
static mt_err changeable(mt_subs *subs, const char *name, mt_topo_errs *errs)
{
    sub_rt *s = find(subs, name);
    if (s && !s->def) {
        add_err(errs, "subscription '%s' is declared in %s; change it there", name,
                subs->topo_path ? subs->topo_path : "the topology file");
        return MT_EEXISTS;
    }
    if (pending_index(subs, name) >= 0) {
        add_err(errs, "another change to subscription '%s' is in progress; try again", name);
        return MT_EEXISTS;
    }
    return MT_OK;
}

/*
 * What the stored definition of dormant subscription 'name' declares, read
 * without opening its files: *conf, or NULL if it no longer parses.
 */
static mt_err dormant_conf(mt_subs *subs, const char *name, mt_sub_conf **conf)
{
    *conf = NULL;
    mt_txn *t;
    mt_err rc = mt_store_read_begin(subs->store, &t);
    if (rc) {
        return rc;
    }
    const void *v;
    size_t vl;
    rc = mt_store_get(t, MT_DB_SUBDEFS, name, strlen(name), &v, &vl);
    if (rc == MT_OK) {
        char *def = mt_xstrndup(v, vl);
        char origin[128];
        snprintf(origin, sizeof origin, "stored definition of '%.64s'", name);
        mt_topo_errs errs = {0};
        mt_topo_parse_stored_sub(name, def, vl, origin, conf, &errs);
        mt_topo_errs_free(&errs);
        free(def);
    } else if (rc == MT_ENOTFOUND) {
        rc = MT_OK;
    }
    mt_store_read_end(t);
    return rc;
}

static const char *kind_of(const mt_sub_conf *c)
{
    return c->webhook_url ? "webhook" : c->pull ? "pull" : "lua";
}


/* What a replacement may not change: how a subscription delivers, its ordering, its priority. */
typedef struct fixed_props {
    const char *kind;
    mt_ordering ordering;
    bool priority;
} fixed_props;

/* The fixed properties of a stored definition that no longer reads (mt_topo_stored_fixed). */
static bool stored_fixed(mt_subs *subs, const char *name, fixed_props *out)
{
    mt_txn *t;
    if (mt_store_read_begin(subs->store, &t)) {
        return false;
    }
    const void *v;
    size_t vl;
    bool ok = mt_store_get(t, MT_DB_SUBDEFS, name, strlen(name), &v, &vl) == MT_OK &&
              mt_topo_stored_fixed(v, vl, &out->kind, &out->ordering, &out->priority);
    mt_store_read_end(t);
    return ok;
}

mt_err mt_subs_put(mt_subs *subs, const char *name, const char *text, size_t len,
                   mt_topo_errs *errs, mt_pull_done_fn done, void *arg)
{
    if (subs->closing) {
        return MT_ECLOSED;
    }
    if (!mt_topo_valid_sub_name(name, strlen(name))) {
        add_err(errs, "request: error: a subscription name must be 1 to 64 letters, digits, "
                      "'_', '-' or '.'");
        return MT_ECONFIG;
    }
    mt_err rc = changeable(subs, name, errs);
    if (rc) {
        return rc;
    }
    json_error_t jerr;
    json_t *body = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(body)) {
        if (body) {
            add_err(errs, "request:1:1: error: a subscription definition must be a JSON object");
        } else {
            add_err(errs, "request:%d:%d: error: invalid JSON: %s", jerr.line, jerr.column,
                    jerr.text);
        }
        json_decref(body);
        return MT_ECONFIG;
    }
    mt_sub_conf *conf;
    rc = mt_topo_parse_sub(name, text, len, "request", &conf, errs);
    if (rc == MT_OK && conf->pull && conf->workers > 1) {
        add_err(errs, "request: error: %s", mt_topo_workers_unused(name));
        mt_sub_conf_free(conf);
        rc = MT_ECONFIG;
    }
    if (rc) {
        json_decref(body);
        return rc;
    }
    /*
     * The definition replaced is the running one, or a stored one that did
     * not load at start: either way the subscription exists, and its
     * position, parked messages and dead letters are kept.
     */
    sub_rt *old = find(subs, name);
    bool dormant = !old && dormant_index(subs, name) >= 0;
    mt_sub_conf *stored = NULL;
    if (dormant) {
        rc = dormant_conf(subs, name, &stored);
        if (rc) {
            add_err(errs, "subscription '%s': cannot read its stored definition (%s)", name,
                    mt_err_str(rc));
            mt_sub_conf_free(conf);
            json_decref(body);
            return rc;
        }
    }
    const mt_sub_conf *prev = old ? old->conf : stored;
    fixed_props was = {0};
    bool have = prev || (dormant && stored_fixed(subs, name, &was));
    if (prev) {
        was = (fixed_props){kind_of(prev), prev->ordering, prev->priority};
    }
    if (dormant && !have) {
        add_err(errs, "subscription '%s' has a stored definition that no longer reads, with its "
                "state; DELETE the subscription to drop both, then PUT it again", name);
        rc = MT_EEXISTS;
    } else if (have && strcmp(was.kind, kind_of(conf)) != 0) {
        add_err(errs, "subscription '%s' delivers by %s; delivery cannot change to %s (DELETE "
                "the subscription and PUT it again)", name, was.kind, kind_of(conf));
        rc = MT_EEXISTS;
    } else if (have && was.ordering != conf->ordering) {
        add_err(errs, "subscription '%s' has ordering %s; ordering cannot change to %s (DELETE "
                "the subscription and PUT it again)", name, mt_ordering_name(was.ordering),
                mt_ordering_name(conf->ordering));
        rc = MT_EEXISTS;
    } else if (have && was.priority != conf->priority) {
        add_err(errs, "subscription '%s': priority cannot change on an existing subscription "
                "(DELETE the subscription and PUT it again)", name);
        rc = MT_EEXISTS;
    }
    mt_sub_conf_free(stored);
    if (rc) {
        mt_sub_conf_free(conf);
        json_decref(body);
        return rc;
    }
    char why[600];
    sub_rt *fresh = sub_new(subs, conf, NULL, why, sizeof why);
    if (!fresh) {
        add_err(errs, "request: error: %s", why);
        json_decref(body);
        return MT_ECONFIG;
    }
    fresh->def = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(body);
    def_job *j = mt_xcalloc(1, sizeof *j);
    *j = (def_job){.subs = subs, .name = mt_xstrdup(name), .def = mt_xstrdup(fresh->def),
                   .fresh = fresh, .created = !old && !dormant, .done = done, .arg = arg};
    return def_submit(subs, j);
}

static void reloaded(mt_err rc, json_t *result, void *arg)
{
    (void) result;
    char *name = arg;
    if (rc) {
        mt_diag_emit(MT_DIAG_ERROR, (const char *const[]){"subscription", name, NULL},
                     "subscription '%s': handler not reloaded: %s", name, mt_err_str(rc));
    } else {
        mt_diag_emit(MT_DIAG_INFO, (const char *const[]){"subscription", name, NULL},
                     "subscription '%s': handler reloaded", name);
    }
    free(name);
}

/*
 * Loads the handler of 's' again into a fresh runtime that takes over as a
 * PUT's does (def_job): from 'src' (len bytes), the text its trial loaded,
 * into every Lua state, or from the file if NULL. False, with the reason
 * logged, if it did not load or cannot take over.
 */
static bool reload_now(mt_subs *subs, sub_rt *s, const char *src, size_t len)
{
    const char *name = s->conf->name;
    char why[600];
    mt_sub_conf *conf = mt_sub_conf_copy(s->conf);
    if (src) {
        conf->handler_src = mt_xmalloc(len + 1);
        memcpy(conf->handler_src, src, len);
        conf->handler_src[len] = '\0';
        conf->handler_src_len = len;
    }
    sub_rt *fresh = sub_new(subs, conf, s->def, why, sizeof why);
    if (!fresh) {
        mt_diag_emit(MT_DIAG_ERROR, (const char *const[]){"subscription", name, NULL},
                     "%s; the handler loaded before goes on running", why);
        return false;
    }
    free(fresh->conf->handler_src); /* every state is loaded */
    fresh->conf->handler_src = NULL;
    fresh->conf->handler_src_len = 0;
    char *arg = mt_xstrdup(name);
    def_job *j = mt_xcalloc(1, sizeof *j);
    *j = (def_job){.subs = subs, .name = mt_xstrdup(name), .fresh = fresh, .reload = true,
                   .done = reloaded, .arg = arg};
    if (def_submit(subs, j) != MT_OK) {
        free(arg);
        return false;
    }
    return true;
}

/* As at start: loaded in the engine, with the watchdog as the last resort. */
static void reload_untried(mt_subs *subs, sub_rt *s, const char *why)
{
    const char *name = s->conf->name;
    mt_diag_emit(MT_DIAG_WARN, (const char *const[]){"subscription", name, NULL},
                 "subscription '%s': cannot try the handler in a child process (%s); loading "
                 "it untried", name, why);
    reload_now(subs, s, NULL, 0);
}

static void trials_start(mt_subs *subs);

static void trial_done(mt_err rc, const char *msg, const char *src, size_t len, void *arg)
{
    reload_trial *r = arg;
    mt_subs *subs = r->subs;
    reload_trial **p = trial_find(subs, r->name);
    mt_assert(*p == r);
    *p = r->next;
    const char *const fields[] = {"subscription", r->name, NULL};
    sub_rt *s = find(subs, r->name);
    if (!s || s->serial != r->serial || s->deleting || pending_index(subs, r->name) >= 0) {
        mt_diag_emit(MT_DIAG_WARN, fields, "subscription '%s': handler not reloaded: the "
                     "subscription was changed or deleted while its handler was tried", r->name);
    } else if (rc == MT_EUNAVAIL) {
        reload_untried(subs, s, msg);
    } else if (rc) {
        mt_diag_emit(MT_DIAG_ERROR, fields, "subscription '%s': handler not reloaded: %s; the "
                     "handler loaded before goes on running", r->name, msg);
    } else {
        reload_now(subs, s, src, len);
    }
    free(r->name);
    free(r);
    trials_start(subs);
}

/*
 * Starts the trials waiting, TRIALS_AT_ONCE at most running: each may take
 * a core and limits.memory, and all run against the wall clock.
 */
static void trials_start(mt_subs *subs)
{
    int running = 0;
    for (reload_trial *r = subs->trials; r; r = r->next) {
        running += r->trial != NULL;
    }
    reload_trial **p = &subs->trials;
    while (*p && running < TRIALS_AT_ONCE) {
        reload_trial *r = *p;
        if (r->trial) {
            p = &r->next; /* running, and counted */
            continue;
        }
        sub_rt *s = find(subs, r->name);
        bool same = s && s->serial == r->serial && !s->deleting;
        char why[300] = "";
        if (same && mt_trial_start(subs->loop, s->conf, trial_done, r, &r->trial, why,
                                   sizeof why) == MT_OK) {
            running++;
            p = &r->next;
            continue;
        }
        *p = r->next;
        if (same) {
            reload_untried(subs, s, why);
        }
        free(r->name);
        free(r);
    }
}

void mt_subs_reload(mt_subs *subs)
{
    if (subs->closing) {
        return;
    }
    int n = 0, failed = 0;
    for (int i = 0; i < subs->n; i++) {
        sub_rt *s = subs->subs[i];
        const char *name = s->conf->name;
        const char *const fields[] = {"subscription", name, NULL};
        if (s->conf->pull || s->conf->webhook_url || s->deleting) {
            continue; /* no handler: nothing to load */
        }
        if (pending_index(subs, name) >= 0) {
            mt_diag_emit(MT_DIAG_WARN, fields, "subscription '%s': handler not reloaded: a "
                         "change to it or a reload is in progress; send SIGHUP again after it",
                         name);
            failed++;
            continue;
        }
        /* The file may have been mended again since: the trial starts over on it. */
        trial_drop(subs, name, MT_DIAG_INFO,
                   "trying the handler again from the start: SIGHUP while it was tried");
        if (!subs->runner->trial_load) {
            bool ok = reload_now(subs, s, NULL, 0);
            n += ok;
            failed += !ok;
            continue;
        }
        reload_trial **tail = &subs->trials;
        while (*tail) {
            tail = &(*tail)->next;
        }
        *tail = mt_xcalloc(1, sizeof **tail);
        **tail = (reload_trial){.subs = subs, .name = mt_xstrdup(name), .serial = s->serial};
        n++;
    }
    mt_info("SIGHUP: loading %d handler(s) again%s (the topology file is read only at start)",
            n, failed ? ", the others keep the code they run (see above)" : "");
    trials_start(subs);
}

mt_err mt_subs_delete(mt_subs *subs, const char *name, mt_topo_errs *errs, mt_pull_done_fn done,
                      void *arg)
{
    if (subs->closing) {
        return MT_ECLOSED;
    }
    sub_rt *s = find(subs, name);
    if (!s) {
        /* A stored definition that did not load at start goes with its state. */
        if (dormant_index(subs, name) < 0) {
            return MT_ENOTFOUND;
        }
        mt_err rc = changeable(subs, name, errs);
        if (rc) {
            return rc;
        }
        def_job *j = mt_xcalloc(1, sizeof *j);
        *j = (def_job){.subs = subs, .name = mt_xstrdup(name), .done = done, .arg = arg};
        return def_submit(subs, j);
    }
    mt_err rc = changeable(subs, name, errs);
    if (rc) {
        return rc;
    }
    /*
     * Invisible and idle at once, so no job of it can write state after the
     * delete; out of the registry once the delete is stored.
     */
    s->deleting = true;
    s->refs++;
    def_job *j = mt_xcalloc(1, sizeof *j);
    *j = (def_job){.subs = subs, .name = mt_xstrdup(name), .victim = s, .done = done, .arg = arg};
    rc = def_submit(subs, j);
    if (rc) {
        s->deleting = false;
        sub_release(s);
    }
    return rc;
}

/* ---- tables ---- */

mt_err mt_subs_table_get(mt_txn *t, const char *table, const char *key, mt_buf *out)
{
    size_t a = strlen(table), b = strlen(key);
    if (a == 0 || a > MT_FX_MAX_TABLE || b == 0 || b > MT_FX_MAX_KEY) {
        return MT_EINVAL;
    }
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    memcpy(k, table, a);
    k[a] = 0;
    memcpy(k + a + 1, key, b);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_KV, k, a + 1 + b, &v, &vl);
    if (rc == MT_OK) {
        mt_buf_add(out, v, vl);
    }
    return rc;
}

mt_err mt_subs_table_scan(mt_txn *t, const char *table, const char *prefix, uint64_t limit,
                          json_t **out)
{
    *out = NULL;
    size_t a = strlen(table), b = strlen(prefix);
    if (a == 0 || a > MT_FX_MAX_TABLE || b > MT_FX_MAX_KEY) {
        return MT_EINVAL;
    }
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    memcpy(k, table, a);
    k[a] = 0;
    memcpy(k + a + 1, prefix, b);
    size_t kl = a + 1 + b;
    mt_cursor *c;
    mt_err rc = mt_store_cursor_open(t, MT_DB_KV, &c);
    if (rc) {
        return rc;
    }
    json_t *o = json_object();
    const void *ck, *cv;
    size_t ckl, cvl;
    rc = mt_store_cursor_seek(c, k, kl, &ck, &ckl, &cv, &cvl);
    for (uint64_t n = 0; rc == MT_OK && n < limit; n++) {
        if (ckl < kl || memcmp(ck, k, kl) != 0) {
            break;
        }
        json_t *v = json_loadb(cv, cvl, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        const char *key = (const char *) ck + a + 1;
        size_t key_len = ckl - a - 1;
        if (v && json_object_setn(o, key, key_len, v) != 0) {
            /* A key that is not UTF-8 (Lua strings are bytes) is listed with
             * U+FFFD for each stray byte rather than left out. */
            json_t *shown = mt_diag_text(key, key_len);
            if (shown) {
                json_object_setn(o, json_string_value(shown), json_string_length(shown), v);
            }
            json_decref(shown);
        }
        json_decref(v);
        rc = mt_store_cursor_next(c, &ck, &ckl, &cv, &cvl);
    }
    mt_store_cursor_close(c);
    *out = o;
    return MT_OK;
}

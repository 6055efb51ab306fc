/*
 * mt_fx.h - a handler's effects: what `ctx` can do.
 *
 * A subscription runs each handler invocation against the writer's
 * transaction. Everything the handler does through its ctx (kv reads and
 * writes, emitted events) goes into that transaction only if it succeeds
 * (buffered mode, or a savepoint), so the effects and the message's
 * acknowledgement commit together or not at all: exactly-once effects.
 * mt_lua's ctx bindings call these functions; mt_sub creates the mt_fx.
 * Runs on the writer thread, or in record mode on a worker thread.
 *
 * Record mode (workers): a handler may also run ahead of the writer, on a
 * worker thread against a read snapshot. Its kv writes then go to a
 * private overlay (shared with the worker's later invocations of the same
 * round, so they read their predecessors' writes), every kv value it read
 * is noted, and its logs are kept. On the writer, mt_fx_effects_validate
 * checks that each value read is still what the store holds, and
 * mt_fx_effects_apply writes the effects as if the handler ran there and
 * then: the same inputs give the same outcome. What cannot be replayed that
 * way (an emit, whose sequence the handler sees; a kv scan) marks the
 * invocation to be run again on the writer. An emit there returns 0 and
 * the run goes on, so that its later kv writes reach the overlay; a scan
 * raises.
 *
 * kv: tables of JSON values. A key in MT_DB_KV is "table NUL key".
 * emit: appends an event to the log with ids derived from the subscription,
 * the triggering event's sequence and the emit's position, so a re-run can
 * never append a duplicate; causationid is the trigger's id, correlationid
 * the trigger's correlationid (or its id).
 */
#ifndef MT_FX_H
#define MT_FX_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_diag.h"
#include "mt_err.h"
#include "mt_event.h"
#include "mt_store.h"

#define MT_FX_MAX_TABLE 64
#define MT_FX_MAX_KEY 400
#define MT_FX_MAX_VALUE (1u << 20)
/* The events one run emits wait in memory for its outcome: at most this many bytes of them. */
#define MT_FX_MAX_EMITTED (64u << 20)
/* So do its kv writes: at most this many bytes of keys and values, overwrites counted again. */
#define MT_FX_MAX_WRITTEN (64u << 20)
/*
 * A run's log lines (ctx.log, print): each cut to MT_FX_LOG_LINE_MAX bytes,
 * and past MT_FX_LOG_LINES lines or MT_FX_LOG_BYTES bytes the rest are
 * dropped, after one line that says so. A handler logging in a loop would
 * otherwise write gigabytes within its instruction budget (to stderr, or,
 * on a worker, kept in memory outside the Lua state's limit).
 */
#define MT_FX_LOG_LINE_MAX (16u << 10)
#define MT_FX_LOG_LINES 1000
#define MT_FX_LOG_BYTES (256u << 10)

typedef struct mt_fx_rec mt_fx_rec;
typedef struct mt_fx_overlay mt_fx_overlay;
typedef struct mt_fx_effects mt_fx_effects;

typedef struct mt_fx {
    mt_txn *txn;              /* borrowed: where reads and effects go (record mode: a snapshot) */
    const char *sub;          /* borrowed: subscription name */
    const mt_event *trigger;  /* borrowed: the event being handled */
    int emitted;              /* events emitted so far by this invocation */
    uint64_t incarnation;     /* of the subscription's name: in emitted ids when not 0 */
    uint32_t log_lines;       /* lines logged so far (MT_FX_LOG_LINES) ... */
    size_t log_bytes;         /* ... and their bytes (MT_FX_LOG_BYTES) */
    char *reject;             /* owned; set by mt_fx_reject: dead-letter at once */
    char *reply_to;           /* unused until request/reply; NULL */
    mt_fx_rec *rec;           /* owned; record or buffered mode */
    mt_txn *base;             /* buffered mode: the writer's transaction */
    mt_txn *savepoint;        /* owned; buffered mode once a scan needed one */
    mt_event_batch *emits;    /* owned; buffered mode: the events emitted, waiting */
    uint64_t emit_first;      /* the sequence the first of them was told */
    /*
     * Buffered mode: a cursor on the kv tables of 'base', left at the key
     * last found (cur_kl bytes of cur_key; 0: none), so that writing that
     * key back (a counter's get, then put) needs no second search. *kv_cur
     * is own_cur, or a cursor lent by the caller (mt_fx_lend_cursor).
     */
    mt_cursor **kv_cur;
    mt_cursor *own_cur;       /* owned */
    size_t cur_kl;
    uint8_t cur_key[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
} mt_fx;

void mt_fx_free(mt_fx *fx);

/*
 * About how many bytes of write-ahead record the run's effects so far will
 * take once written: its kv keys and values and emitted events, with some
 * for each write's framing (an estimate from above, for limits).
 */
size_t mt_fx_pending_bytes(const mt_fx *fx);

/*
 * Buffered mode, on the writer: kv writes and emitted events wait in fx
 * (reads see the writes) and reach 'txn' only in mt_fx_finish, so a failed
 * invocation leaves nothing to undo and needs no savepoint. An emit is told
 * the sequence its event will get: nothing else appends to 'txn' while the
 * handler runs, so the events appended at the end get the log's head + 1,
 * + 2, ... as told (mt_fx_finish checks). The first scan opens a savepoint
 * of 'txn', moves the waiting writes into it and goes on there.
 */
void mt_fx_init_buffered(mt_fx *fx, mt_txn *txn, const char *sub, const mt_event *trigger);

/*
 * Buffered mode: kv reads go through *slot, a cursor on the kv tables of
 * the same transaction that the caller keeps for many runs (NULL at
 * first: the first kv read opens it into *slot) and closes before the
 * transaction ends; opening one per run costs about what it saves. Call
 * before any kv read.
 */
void mt_fx_lend_cursor(mt_fx *fx, mt_cursor **slot);

/*
 * Ends a buffered invocation: with 'keep' its effects go into the
 * transaction (the emitted events, then the writes), else they are dropped.
 * A store error means the transaction holds part of them: the caller must
 * give it up.
 */
mt_err mt_fx_finish(mt_fx *fx, bool keep);

/* A worker's private view of its round's writes. Freed with mt_fx_overlay_free. */
mt_fx_overlay *mt_fx_overlay_new(void);
void mt_fx_overlay_free(mt_fx_overlay *ov);
size_t mt_fx_overlay_size(const mt_fx_overlay *ov);

/* Binds 'fx' in record mode: reads from 'snapshot' through 'ov'; nothing is written. */
void mt_fx_init_record(mt_fx *fx, mt_txn *snapshot, mt_fx_overlay *ov, const char *sub,
                       const mt_event *trigger);

/*
 * Ends a record-mode invocation. With 'keep' (it succeeded) its writes
 * become visible through the overlay to the worker's next invocations.
 * Returns what it did (free with mt_fx_effects_free), or NULL if it cannot
 * be replayed and must run on the writer; its writes up to the effect that
 * stopped it still go into the overlay, as the writer's run will most
 * likely make them.
 */
mt_fx_effects *mt_fx_record_end(mt_fx *fx, bool keep);
void mt_fx_effects_free(mt_fx_effects *e);

/*
 * On the writer: MT_OK if every kv value the recorded invocation read is
 * still what 'txn' holds; MT_ECONFLICT if one changed; store errors.
 */
mt_err mt_fx_effects_validate(const mt_fx_effects *e, mt_txn *txn);

/*
 * Emits the recorded logs (as fx's) and, with 'writes' (the invocation
 * succeeded), writes its kv writes into fx's savepoint.
 */
mt_err mt_fx_effects_apply(const mt_fx_effects *e, mt_fx *fx, bool writes);

/*
 * ctx.log: at once in direct and buffered mode; in record mode kept for
 * mt_fx_effects_apply. Within the limits above (MT_FX_LOG_*).
 */
void mt_fx_log(mt_fx *fx, mt_diag_level level, const char *msg);

/*
 * Reads table/key. *json points into the store and is valid only until the
 * next write through fx (copy it at once). MT_ENOTFOUND if absent;
 * MT_EINVAL for an empty or oversized table or key.
 */
mt_err mt_fx_kv_get(mt_fx *fx, const char *table, const char *key, const char **json,
                    size_t *len);

/*
 * Writes table/key = json (valid JSON text, at most MT_FX_MAX_VALUE).
 * MT_EINVAL, MT_ETOOBIG (the run's writes past MT_FX_MAX_WRITTEN), MT_EFULL,
 * MT_EIO.
 */
mt_err mt_fx_kv_put(mt_fx *fx, const char *table, const char *key, const char *json, size_t len);

/* Deletes table/key; absent is not an error. */
mt_err mt_fx_kv_del(mt_fx *fx, const char *table, const char *key);

/*
 * Visits keys of 'table' starting with 'prefix' in key order, at most
 * 'limit'. The visitor's strings are valid during the call; a non-zero
 * return stops the scan. MT_EINVAL on bad names, MT_EIO.
 */
mt_err mt_fx_kv_scan(mt_fx *fx, const char *table, const char *prefix, size_t limit,
                     int (*visit)(const char *key, size_t klen, const char *json, size_t len,
                                  void *arg),
                     void *arg);

/*
 * Appends an event of 'type' with JSON 'data' (NULL = none). 'subject'
 * NULL means the trigger's subject. 'deliverafter_us' (0 = none) embargoes
 * it for every subscription until then. Sets *sequence. MT_EINVAL with a
 * message in err for a bad type, subject or data; MT_EFULL, MT_EIO.
 */
mt_err mt_fx_emit(mt_fx *fx, const char *type, const char *data, size_t data_len,
                  const char *subject, int64_t deliverafter_us, uint64_t *sequence, char *err,
                  size_t errlen);

/*
 * mt_fx_emit for data whose jansson value the caller made on this thread
 * ('value', taken; NULL: as mt_fx_emit): the data is then neither parsed
 * again nor copied for the data cache.
 */
mt_err mt_fx_emit_value(mt_fx *fx, const char *type, const char *data, size_t data_len,
                        struct json_t *value, const char *subject, int64_t deliverafter_us,
                        uint64_t *sequence, char *err, size_t errlen);

/*
 * Answers a request: appends an event whose type is the trigger's `replyto`
 * and whose correlationid is the trigger's id (what a caller of
 * POST /events?wait=reply waits for). MT_EINVAL if the trigger has no
 * replyto; otherwise as mt_fx_emit.
 */
mt_err mt_fx_reply(mt_fx *fx, const char *data, size_t data_len, uint64_t *sequence, char *err,
                   size_t errlen);

/* The trigger's time (its `time` attribute, else when it was recorded), in microseconds. */
int64_t mt_fx_now_us(const mt_fx *fx);

/* Records a rejection: the handler's effects are discarded and the message dead-lettered. */
void mt_fx_reject(mt_fx *fx, const char *reason);

#endif

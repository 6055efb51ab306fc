/*
 * mt_sub.h - durable subscriptions: which events reach a handler, in what
 * order, and what happens when the handler fails.
 *
 * Each subscription has a position in the log (its cursor). Delivery runs
 * as jobs on the store's writer thread: a dispatch job reads events after
 * the cursor, keeps those whose type matches one of the topic patterns and
 * whose content passes the filter, and runs the handler on each inside a
 * savepoint (mt_fx). A success keeps the handler's effects; a failure
 * discards them. The cursor, the effects and every retry or dead-letter
 * record commit in the same transaction, so after any crash each event's
 * effects exist exactly once.
 *
 * Ordering lanes: with `ordering: subject` each subject is a lane; `strict`
 * has one lane for everything; `none` gives every event its own. A failed
 * message is parked at the head of its lane with a retry time in the time
 * index (MT_DB_SCHED, exponential backoff with jitter); later messages of a
 * busy lane are parked behind it and run, in order, once the head succeeds
 * or is dead-lettered. After max_attempts (or at once on ctx.reject) the
 * message goes to the dead-letter queue with every attempt's error.
 *
 * The registry (mt_subs) lives on the loop thread: it submits dispatch jobs
 * when events are appended or a retry falls due, one job per subscription
 * at a time. The handler itself is reached through mt_sub_runner, so this
 * module knows nothing of Lua.
 */
#ifndef MT_SUB_H
#define MT_SUB_H
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include "mt_err.h"
#include "mt_event.h"
#include "mt_fx.h"
#include "mt_loop.h"
#include "mt_mem.h"
#include "mt_store.h"
#include "mt_topo.h"

typedef struct mt_subs mt_subs;

/* How handlers are run. All calls for one handler come from one thread at a time. */
typedef struct mt_sub_runner {
    /*
     * Loads the handler of 'conf'. Sets *handler. On failure writes the
     * reason into err and returns MT_ELUA (or MT_EIO).
     */
    mt_err (*open)(const mt_sub_conf *conf, void **handler, char *err, size_t errlen);
    /*
     * Runs the handler on 'ev' (attempt from 1) with its effects going to
     * 'fx'. Returns MT_OK, or an error with the message in 'error' and the
     * traceback (if any) in 'traceback': MT_EINVAL when the event can never
     * be given to the handler (it is dead-lettered without retries). A
     * rejection is MT_OK with fx->reject set.
     */
    mt_err (*invoke)(void *handler, const mt_event *ev, uint32_t attempt, mt_fx *fx,
                     mt_buf *error, mt_buf *traceback);
    void (*close)(void *handler);
    /*
     * A reload (SIGHUP) first loads each handler in a child process that
     * `moontide check --handler` runs (mt_trial.h), as 'open' loads it, so
     * top-level code stuck in a C function cannot stop the engine.
     */
    bool trial_load;
} mt_sub_runner;

/*
 * Creates the registry for the subscriptions of 'topo' (borrowed; must
 * outlive it) and loads every handler. Does not start delivering: call
 * mt_subs_kick. MT_ECONFIG with a message in err if a handler or filter
 * fails to load.
 */
mt_err mt_subs_open(mt_loop *loop, mt_store *store, const mt_topo *topo,
                    const mt_sub_runner *runner, mt_subs **out, char *err, size_t errlen);

/* Stops submitting jobs; those already submitted finish with the store. NULL does nothing. */
void mt_subs_stop(mt_subs *subs);

/*
 * Frees the registry and its handlers. Call after the store is closed (its
 * writer may still be running handlers until then). NULL does nothing.
 */
void mt_subs_close(mt_subs *subs);

/* New events may be there: submit a dispatch job for every idle subscription. */
void mt_subs_kick(mt_subs *subs);

/*
 * An HTTP append was just queued: submit a dispatch job now, behind it, for
 * every subscription with none in flight, so that it usually runs in the
 * append's group and the handlers' effects commit with the events (one
 * sync, not two). Busy subscriptions (a job in flight) and those with
 * workers (they run ahead on what is committed) are left to the kick after
 * the append commits. Returns the append's number for that kick.
 */
uint64_t mt_subs_prime(mt_subs *subs);

/*
 * mt_subs_kick after the append that mt_subs_prime numbered 'append' has
 * committed, leaving out the subscriptions that had a job queued after the
 * append (no job runs before a repeatable job queued before it, mt_store.h,
 * so that job sees its events): the kick would only add a job with nothing
 * to do.
 */
void mt_subs_kick_after(mt_subs *subs, uint64_t append);

/* Also calls cb on every kick (webhooks pull when events arrive). */
void mt_subs_on_kick(mt_subs *subs, void (*cb)(void *arg), void *arg);

/* Called (on the loop thread) whenever jobs of this module appended events. */
void mt_subs_on_append(mt_subs *subs, void (*cb)(void *arg), void *arg);

/*
 * Called on the loop thread when a subscription is created or replaced
 * over HTTP ('conf' is its new definition, valid until the next change of
 * that name) or deleted ('conf' NULL).
 */
typedef void (*mt_sub_change_fn)(const char *name, const mt_sub_conf *conf, void *arg);
void mt_subs_on_change(mt_subs *subs, mt_sub_change_fn cb, void *arg);

/* Calls fn for every live subscription's definition (valid until it changes). */
void mt_subs_each(mt_subs *subs, void (*fn)(const mt_sub_conf *conf, void *arg), void *arg);

/*
 * Status of one subscription ('name') or of all (name NULL: a JSON array)
 * as a new JSON value: position, head, lag, handled, retried, dead_lettered,
 * retrying (messages that failed and wait for another attempt), dlq (entries now), last_error. MT_ENOTFOUND.
 */
mt_err mt_subs_status(mt_subs *subs, mt_txn *t, const char *name, json_t **out);

/* The DLQ of 'name' as a JSON array (after 'after' sequence, at most 'limit'). MT_ENOTFOUND. */
mt_err mt_subs_dlq_list(mt_subs *subs, mt_txn *t, const char *name, uint64_t after,
                        uint64_t limit, json_t **out);

/*
 * Moves dead letters of 'name' back into delivery (seq 0 = all, else that
 * one) or deletes them (purge). Runs as a writer job; 'done' gets the
 * outcome and the count. MT_ENOTFOUND if no such subscription.
 */
mt_err mt_subs_dlq_redrive(mt_subs *subs, const char *name, uint64_t seq,
                           void (*done)(mt_err rc, uint64_t count, void *arg), void *arg);
mt_err mt_subs_dlq_purge(mt_subs *subs, const char *name, uint64_t seq,
                         void (*done)(mt_err rc, uint64_t count, void *arg), void *arg);

/*
 * Pauses (pause true) or resumes a subscription; persisted, so it holds
 * across restarts. A paused subscription delivers nothing; its messages wait
 * durably. 'done' gets the outcome (count 0). MT_ENOTFOUND.
 */
mt_err mt_subs_pause(mt_subs *subs, const char *name, bool pause,
                     void (*done)(mt_err rc, uint64_t count, void *arg), void *arg);

/* Called on the loop thread with a job's outcome and its JSON result (borrowed; NULL on error). */
typedef void (*mt_pull_done_fn)(mt_err rc, json_t *result, void *arg);

/*
 * Subscriptions made at runtime (PUT /subscriptions/{name}). 'text' is a
 * JSON object with the fields a subscription has in the topology file. The
 * definition is checked like the file (every problem into 'errs', as
 * "request:LINE:COL: error: ..."; MT_ECONFIG), its handler loaded, then it
 * is stored and takes effect in one writer job: 'done' gets
 * {"created": true|false}. A new subscription starts from its `start`; a
 * replaced one keeps its position, parked messages and dead letters, but
 * its delivery kind, ordering and priority cannot change (MT_EEXISTS, as
 * for a name the topology file declares, or one with a change in flight).
 * Definitions survive restarts; at start the topology file's own
 * subscriptions take precedence over stored ones of the same name.
 */
mt_err mt_subs_put(mt_subs *subs, const char *name, const char *text, size_t len,
                   mt_topo_errs *errs, mt_pull_done_fn done, void *arg);

/*
 * Loads every Lua handler subscription's handler again from its file (and
 * the modules it requires, as they are needed), as SIGHUP asks: each that
 * compiles takes over from the running one, whose jobs finish first; one
 * that does not is logged with its error and the running code stays. The
 * topology file is not read again. Loop thread.
 */
void mt_subs_reload(mt_subs *subs);

/*
 * Deletes a subscription made over HTTP, with its position, parked messages
 * and dead letters ('done' gets {"deleted": true}). MT_ENOTFOUND;
 * MT_EEXISTS (reason in errs) for one the topology file declares.
 */
mt_err mt_subs_delete(mt_subs *subs, const char *name, mt_topo_errs *errs, mt_pull_done_fn done,
                      void *arg);

/*
 * Pull consumers (deliver: pull): leases up to 'max' messages, queued ones,
 * expired leases and delayed nacks first, then new events. Ordering lanes
 * hold as for handlers: a lane's next message is leased only once the one
 * before is acknowledged or dead-lettered. A paused subscription hands out
 * nothing. 'done' gets {"items": [...], "next_due_us": N}: N > 0 is when
 * the next queued message (an embargo, a lease or a nack delay) falls due.
 * A lease lasts the subscription's `lease`; an unacknowledged one comes
 * back, counting an attempt, and after max_attempts goes to the dead-letter
 * queue. Each item is {"lease", "attempt", "sequence", "raw"}: "raw" is the
 * structured event's exact JSON text (data byte for byte). MT_ENOTFOUND,
 * MT_EINVAL if the subscription is not a pull one, MT_ECLOSED.
 */
mt_err mt_subs_pull(mt_subs *subs, const char *name, uint32_t max, mt_pull_done_fn done,
                    void *arg);

/*
 * The delay before retry 'attempts' + 1 of a message of 'c', in µs: the
 * backoff doubled per attempt up to max_backoff, half of it fixed and half
 * random so that many messages' retries spread out.
 */
int64_t mt_sub_backoff_us(const mt_sub_conf *c, uint32_t attempts);

typedef enum mt_lease_op { MT_LEASE_ACK, MT_LEASE_NACK, MT_LEASE_EXTEND } mt_lease_op;

/*
 * Acknowledges, nacks (redelivered after delay_ms) or extends (by the
 * subscription's lease) the given lease tokens (a JSON array of strings).
 * A nack's 'error' (NULL for none) is kept as that attempt's error, as a
 * handler's is, and becomes the subscription's last error.
 * 'done' gets {"count": N, "unknown": [tokens that match no live lease]}.
 */
mt_err mt_subs_lease_op(mt_subs *subs, const char *name, mt_lease_op op, const json_t *tokens,
                        uint64_t delay_ms, const char *error, mt_pull_done_fn done,
                        void *arg);

/* Whether 'name' is a pull subscription. */
bool mt_subs_is_pull(mt_subs *subs, const char *name);

/* Reads table/key written by handlers (JSON text into out). MT_ENOTFOUND, MT_EINVAL. */
mt_err mt_subs_table_get(mt_txn *t, const char *table, const char *key, mt_buf *out);

/* Lists table entries with key prefix as a JSON object {key: value}, at most limit. */
mt_err mt_subs_table_scan(mt_txn *t, const char *table, const char *prefix, uint64_t limit,
                          json_t **out);

/* Whether the subscription exists. */
bool mt_subs_has(mt_subs *subs, const char *name);

/*
 * Why a subscription made over HTTP did not start (its definition and state
 * are stored, it does not run), or NULL if 'name' is no such subscription.
 */
const char *mt_subs_not_started(mt_subs *subs, const char *name);

#endif

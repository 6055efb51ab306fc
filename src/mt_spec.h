/*
 * mt_spec.h - handlers run ahead on worker threads, for subscriptions with
 * `workers: N` (N > 1).
 *
 * Each such subscription has N worker threads, each with its own handler
 * instance (one lua_State per handler per worker). A round: every worker
 * opens a read snapshot and asks the plan (the subscription's code) which
 * events it runs; the plan hands each lane to one worker, so a subject's
 * events stay on one worker and in log order, and different subjects run
 * in parallel. The worker runs the handler on each in record mode (mt_fx):
 * kv writes go to the worker's overlay, the values read are noted. When
 * every worker is done, 'done' runs on the loop thread with the round's
 * results. A worker's overlay outlives its round, so the next round can
 * run while the writer applies this one and still read what this one
 * wrote; mt_spec_reset drops the overlays when the writer found them
 * wrong.
 *
 * The writer then delivers as always, but before it runs the handler on an
 * event it takes that event's result (mt_spec_take): if every value the
 * result read is still what the store holds, the recorded outcome and
 * writes are applied instead of running the handler; otherwise the handler
 * runs on the writer. Either way the effects commit with the
 * acknowledgement, exactly once and in order: workers only take the
 * handler's time off the writer. Results that cannot be replayed (an emit,
 * whose sequence the handler sees; a kv scan) run on the writer too.
 */
#ifndef MT_SPEC_H
#define MT_SPEC_H
#include <stdbool.h>
#include <stdint.h>
#include "mt_err.h"
#include "mt_event.h"
#include "mt_fx.h"
#include "mt_loop.h"
#include "mt_mem.h"
#include "mt_store.h"
#include "mt_sub.h"

typedef struct mt_spec mt_spec;
typedef struct mt_spec_round mt_spec_round;

/* One invocation run ahead. */
typedef struct mt_spec_result {
    uint64_t seq;
    int worker;               /* the worker that ran it, which frees it */
    bool taken;               /* by mt_spec_take */
    mt_err rc;                /* the handler's outcome (MT_OK, MT_ELUA ...) */
    char *reject;             /* owned; ctx.reject's reason, or NULL */
    mt_buf error, traceback;
    mt_fx_effects *effects;   /* owned; NULL: it must run on the writer */
} mt_spec_result;

/*
 * The plan of a round, called on worker k of n with its snapshot: calls
 * run(ev, ctx) for each event worker k runs, in log order, for events after
 * 'base' only and at most 'span' past it. A false return from run means
 * stop. Returns the last sequence it considered (the round's end).
 */
typedef uint64_t (*mt_spec_plan_fn)(mt_txn *snapshot, int k, int n, uint64_t base, uint64_t span,
                                    void *plan_arg, bool (*run)(const mt_event *ev, void *ctx),
                                    void *ctx);

/*
 * Starts n worker threads for subscription 'conf' (borrowed; outlives the
 * pool), each with a handler from 'runner'. MT_ECONFIG with the reason in
 * err if a handler does not load; MT_EIO if a thread cannot start.
 */
mt_err mt_spec_open(const mt_sub_runner *runner, const mt_sub_conf *conf, int n, mt_store *store,
                    mt_loop *loop, mt_spec **out, char *err, size_t errlen);

/*
 * Waits for a round in flight and joins the workers (before the store
 * closes); results stay for the writer's jobs still queued. NULL does nothing.
 */
void mt_spec_stop(mt_spec *sp);

/* Stops (if not yet) and frees everything. NULL does nothing. */
void mt_spec_close(mt_spec *sp);

/*
 * Starts a round over the events after 'base' (at most 'span' sequences
 * past it). 'done' runs on the loop thread once every worker finished,
 * with the round (the callee owns it: mt_spec_round_free). One round at a
 * time. Loop thread.
 */
void mt_spec_start(mt_spec *sp, uint64_t base, uint64_t span, mt_spec_plan_fn plan,
                   void *plan_arg, void (*done)(mt_spec_round *round, void *arg), void *arg);

/* The last sequence a finished round covered. */
uint64_t mt_spec_round_end(const mt_spec_round *r);

/* Whether it looked at any event (its snapshot may have failed). */
bool mt_spec_round_covered(const mt_spec_round *r);

/*
 * Takes a finished round's result for 'seq' once, or NULL. It stays the
 * round's: valid until mt_spec_round_free. Any thread that owns the round
 * (the writer, in the dispatch job it was handed to).
 */
mt_spec_result *mt_spec_take(mt_spec_round *r, uint64_t seq);

/*
 * Lets go of a round (NULL does nothing): its results go back to the
 * workers that made them, to be freed on their threads. Before
 * mt_spec_close.
 */
void mt_spec_round_free(mt_spec_round *r);

/* The workers forget their overlays before their next round. Loop thread. */
void mt_spec_reset(mt_spec *sp);

#endif

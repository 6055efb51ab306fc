#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_diag.h"
#include "mt_spec.h"
#include "mt_watch.h"

#define OVERLAY_MAX 65536    /* keys a worker's overlay holds before it starts afresh */

typedef struct worker {
    mt_spec *sp;
    int k;
    pthread_t thread;
    bool started;
    void *handler;            /* this worker's own handler instance */
    uint64_t round;           /* the last round it ran */
    mt_fx_overlay *ov;        /* its writes of earlier rounds, until reset */
    mt_txn *snap;             /* its read transaction, paused between rounds */
    uint64_t reset;           /* the last reset it saw */
    uint64_t end;             /* the last sequence its plan considered this round */
    /*
     * Its results of rounds the writer is done with, for it to free (under
     * mu): the loop thread appends to dead[live], the worker swaps 'live'
     * and frees the other. Freed on the writer, they took the worker's
     * malloc arena lock for every block, and the worker's next mallocs
     * went the slow way through the blocks given back: about two fifths of
     * the writer's time and a third of the workers' with a kv handler.
     */
    mt_spec_result **dead[2];
    size_t ndead[2], capdead[2];
    int live;
} worker;

struct mt_spec_round {
    mt_spec *sp;
    uint64_t base, span, end;
    mt_spec_result **results; /* span slots, seq - base - 1; each written by one worker */
};

struct mt_spec {
    const mt_sub_runner *runner;
    const mt_sub_conf *conf;  /* borrowed */
    mt_store *store;          /* borrowed */
    int n;
    worker *workers;          /* owned, n */
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* a round started, or stop */
    pthread_cond_t idle;      /* the round's last worker finished */
    uint64_t round;
    uint64_t reset;           /* bumped by mt_spec_reset */
    int running;              /* workers still in the round */
    bool stopping;
    mt_spec_round *cur;       /* the round running (or finished, until 'done' takes it) */
    mt_spec_plan_fn plan;
    void *plan_arg;
    void (*done)(mt_spec_round *round, void *arg);
    void *done_arg;
    struct event *done_ev;    /* brings 'done' onto the loop thread */
};

static void result_free(mt_spec_result *r)
{
    if (r) {
        free(r->reject);
        mt_buf_free(&r->error);
        mt_buf_free(&r->traceback);
        mt_fx_effects_free(r->effects);
        free(r);
    }
}

/* Frees the results of rounds done with that were handed to 'w'. Its thread, or after it ended. */
static void bury(worker *w, int which)
{
    for (size_t i = 0; i < w->ndead[which]; i++) {
        result_free(w->dead[which][i]);
    }
    w->ndead[which] = 0;
}

void mt_spec_round_free(mt_spec_round *r)
{
    if (!r) {
        return;
    }
    mt_spec *sp = r->sp;
    pthread_mutex_lock(&sp->mu);
    for (uint64_t i = 0; i < r->span; i++) {
        mt_spec_result *res = r->results[i];
        if (!res) {
            continue;
        }
        worker *w = &sp->workers[res->worker];
        int l = w->live;
        if (w->ndead[l] == w->capdead[l]) {
            w->capdead[l] = w->capdead[l] ? 2 * w->capdead[l] : 256;
            w->dead[l] = mt_xrealloc(w->dead[l], w->capdead[l] * sizeof *w->dead[l]);
        }
        w->dead[l][w->ndead[l]++] = res;
    }
    pthread_mutex_unlock(&sp->mu);
    free(r->results);
    free(r);
}

uint64_t mt_spec_round_end(const mt_spec_round *r)
{
    return r->end;
}

bool mt_spec_round_covered(const mt_spec_round *r)
{
    return r->end > r->base;
}

typedef struct round_ctx {
    worker *w;
    mt_txn *snap;
    mt_fx_overlay *ov;
} round_ctx;

/* Runs the handler on 'ev' in record mode and keeps the result. */
static bool run_one(const mt_event *ev, void *arg)
{
    round_ctx *rc = arg;
    mt_spec *sp = rc->w->sp;
    mt_spec_round *round = sp->cur;
    if (ev->sequence <= round->base || ev->sequence > round->base + round->span) {
        return false;
    }
    if (mt_watch_noted(sp->conf->name, ev)) {
        return true; /* no result: the writer dead-letters it (mt_watch_take) */
    }
    mt_spec_result *r = mt_xcalloc(1, sizeof *r);
    r->seq = ev->sequence;
    r->worker = rc->w->k;
    mt_buf_init(&r->error);
    mt_buf_init(&r->traceback);
    mt_fx fx;
    mt_fx_init_record(&fx, rc->snap, rc->ov, sp->conf->name, ev);
    r->rc = sp->runner->invoke(rc->w->handler, ev, 1, &fx, &r->error, &r->traceback);
    if (fx.reject) {
        r->reject = mt_xstrdup(fx.reject);
    }
    bool store_failed = r->rc == MT_EFULL || r->rc == MT_EIO;
    r->effects = mt_fx_record_end(&fx, r->rc == MT_OK && !fx.reject);
    mt_fx_free(&fx);
    if (store_failed) {
        /* Not the handler's doing: let the writer run it. */
        mt_fx_effects_free(r->effects);
        r->effects = NULL;
    }
    round->results[ev->sequence - round->base - 1] = r;
    return true;
}

static void run_round(worker *w, bool reset)
{
    mt_spec *sp = w->sp;
    w->end = sp->cur->base;
    if (reset || mt_fx_overlay_size(w->ov) > OVERLAY_MAX) {
        mt_fx_overlay_free(w->ov);
        w->ov = NULL;
    }
    if (!w->ov) {
        w->ov = mt_fx_overlay_new();
    }
    if (mt_store_read_renew(sp->store, &w->snap) != MT_OK) {
        return; /* nothing run ahead: the writer runs everything */
    }
    round_ctx rc = {w, w->snap, w->ov};
    w->end = sp->plan(rc.snap, w->k, sp->n, sp->cur->base, sp->cur->span, sp->plan_arg, run_one,
                      &rc);
    mt_store_read_pause(w->snap);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pthread_setname_np(pthread_self(), "worker");
    mt_spec *sp = w->sp;
    pthread_mutex_lock(&sp->mu);
    for (;;) {
        while (!sp->stopping && w->round == sp->round) {
            pthread_cond_wait(&sp->wake, &sp->mu);
        }
        if (sp->stopping) {
            break;
        }
        w->round = sp->round;
        bool reset = w->reset != sp->reset;
        w->reset = sp->reset;
        int dead = w->live;
        w->live = !w->live;
        pthread_mutex_unlock(&sp->mu);
        bury(w, dead);
        run_round(w, reset);
        pthread_mutex_lock(&sp->mu);
        if (w->end > sp->cur->end) {
            sp->cur->end = w->end;
        }
        if (--sp->running == 0) {
            event_active(sp->done_ev, EV_TIMEOUT, 0);
            pthread_cond_broadcast(&sp->idle);
        }
    }
    pthread_mutex_unlock(&sp->mu);
    mt_store_read_end(w->snap); /* before the store closes, which waits for this thread */
    w->snap = NULL;
    mt_watch_forget();
    return NULL;
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    mt_spec *sp = arg;
    pthread_mutex_lock(&sp->mu);
    mt_spec_round *r = sp->cur;
    sp->cur = NULL;
    pthread_mutex_unlock(&sp->mu);
    sp->done(r, sp->done_arg);
}

mt_err mt_spec_open(const mt_sub_runner *runner, const mt_sub_conf *conf, int n, mt_store *store,
                    mt_loop *loop, mt_spec **out, char *err, size_t errlen)
{
    *out = NULL;
    mt_spec *sp = mt_xcalloc(1, sizeof *sp);
    sp->runner = runner;
    sp->conf = conf;
    sp->store = store;
    sp->n = n;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_cond_init(&sp->wake, NULL);
    pthread_cond_init(&sp->idle, NULL);
    sp->done_ev = event_new(mt_loop_base(loop), -1, 0, on_done, sp);
    sp->workers = mt_xcalloc((size_t) n, sizeof *sp->workers);
    for (int k = 0; k < n; k++) {
        worker *w = &sp->workers[k];
        w->sp = sp;
        w->k = k;
        char why[512] = "";
        if (runner->open(conf, &w->handler, why, sizeof why)) {
            snprintf(err, errlen, "subscription '%s': worker %d: %s", conf->name, k + 1, why);
            mt_spec_close(sp);
            return MT_ECONFIG;
        }
    }
    for (int k = 0; k < n; k++) {
        worker *w = &sp->workers[k];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            snprintf(err, errlen, "subscription '%s': cannot start worker threads", conf->name);
            mt_spec_close(sp);
            return MT_EIO;
        }
        w->started = true;
    }
    *out = sp;
    return MT_OK;
}

void mt_spec_start(mt_spec *sp, uint64_t base, uint64_t span, mt_spec_plan_fn plan,
                   void *plan_arg, void (*done)(mt_spec_round *round, void *arg), void *arg)
{
    pthread_mutex_lock(&sp->mu);
    mt_assert(sp->running == 0 && !sp->stopping && !sp->cur);
    mt_spec_round *r = mt_xcalloc(1, sizeof *r);
    r->sp = sp;
    r->results = mt_xcalloc(span ? span : 1, sizeof *r->results);
    r->base = base;
    r->span = span;
    r->end = base;
    sp->cur = r;
    sp->plan = plan;
    sp->plan_arg = plan_arg;
    sp->done = done;
    sp->done_arg = arg;
    sp->round++;
    sp->running = sp->n;
    pthread_cond_broadcast(&sp->wake);
    pthread_mutex_unlock(&sp->mu);
}

mt_spec_result *mt_spec_take(mt_spec_round *r, uint64_t seq)
{
    if (!r || seq <= r->base || seq > r->base + r->span) {
        return NULL;
    }
    mt_spec_result *res = r->results[seq - r->base - 1];
    if (!res || res->taken) {
        return NULL;
    }
    res->taken = true;
    return res;
}

void mt_spec_reset(mt_spec *sp)
{
    pthread_mutex_lock(&sp->mu);
    sp->reset++;
    pthread_mutex_unlock(&sp->mu);
}

void mt_spec_stop(mt_spec *sp)
{
    if (!sp) {
        return;
    }
    pthread_mutex_lock(&sp->mu);
    while (sp->running > 0) {
        pthread_cond_wait(&sp->idle, &sp->mu);
    }
    sp->stopping = true;
    pthread_cond_broadcast(&sp->wake);
    pthread_mutex_unlock(&sp->mu);
    for (int k = 0; k < sp->n; k++) {
        worker *w = &sp->workers[k];
        if (w->started) {
            pthread_join(w->thread, NULL);
            w->started = false;
        }
    }
}

void mt_spec_close(mt_spec *sp)
{
    if (!sp) {
        return;
    }
    mt_spec_stop(sp);
    for (int k = 0; k < sp->n; k++) {
        worker *w = &sp->workers[k];
        if (w->handler) {
            sp->runner->close(w->handler);
        }
        mt_fx_overlay_free(w->ov);
    }
    mt_spec_round_free(sp->cur);
    for (int k = 0; k < sp->n; k++) {
        worker *w = &sp->workers[k];
        for (int which = 0; which < 2; which++) {
            bury(w, which);
            free(w->dead[which]);
        }
    }
    event_free(sp->done_ev);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->wake);
    pthread_cond_destroy(&sp->idle);
    free(sp->workers);
    free(sp);
}

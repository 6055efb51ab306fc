#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_diag.h"
#include "mt_spec.h"

typedef struct worker {
    mt_spec *sp;
    int k;
    pthread_t thread;
    bool started;
    void *handler;            /* this worker's own handler instance */
    uint64_t round;           /* the last round it ran */
} worker;

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
    int running;              /* workers still in the round */
    bool stopping;
    uint64_t base, span;      /* the round: events base+1 .. base+span */
    mt_spec_plan_fn plan;
    void *plan_arg;
    void (*done)(void *arg);
    void *done_arg;
    struct event *done_ev;    /* brings 'done' onto the loop thread */
    mt_spec_result **results; /* span slots, seq - base - 1; each written by one worker */
};

void mt_spec_result_free(mt_spec_result *r)
{
    if (r) {
        free(r->reject);
        mt_buf_free(&r->error);
        mt_buf_free(&r->traceback);
        mt_fx_effects_free(r->effects);
        free(r);
    }
}

static void results_clear(mt_spec *sp)
{
    for (uint64_t i = 0; sp->results && i < sp->span; i++) {
        mt_spec_result_free(sp->results[i]);
    }
    free(sp->results);
    sp->results = NULL;
    sp->span = 0;
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
    if (ev->sequence <= sp->base || ev->sequence > sp->base + sp->span) {
        return false;
    }
    mt_spec_result *r = mt_xcalloc(1, sizeof *r);
    r->seq = ev->sequence;
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
    sp->results[ev->sequence - sp->base - 1] = r;
    return true;
}

static void run_round(worker *w)
{
    mt_spec *sp = w->sp;
    round_ctx rc = {w, NULL, NULL};
    if (mt_store_read_begin(sp->store, &rc.snap) != MT_OK) {
        return; /* nothing run ahead: the writer runs everything */
    }
    rc.ov = mt_fx_overlay_new();
    sp->plan(rc.snap, w->k, sp->n, sp->base, sp->span, sp->plan_arg, run_one, &rc);
    mt_fx_overlay_free(rc.ov);
    mt_store_read_end(rc.snap);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
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
        pthread_mutex_unlock(&sp->mu);
        run_round(w);
        pthread_mutex_lock(&sp->mu);
        if (--sp->running == 0) {
            event_active(sp->done_ev, EV_TIMEOUT, 0);
            pthread_cond_broadcast(&sp->idle);
        }
    }
    pthread_mutex_unlock(&sp->mu);
    return NULL;
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    mt_spec *sp = arg;
    sp->done(sp->done_arg);
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
                   void *plan_arg, void (*done)(void *arg), void *arg)
{
    pthread_mutex_lock(&sp->mu);
    mt_assert(sp->running == 0 && !sp->stopping);
    results_clear(sp);
    sp->results = mt_xcalloc(span ? span : 1, sizeof *sp->results);
    sp->base = base;
    sp->span = span;
    sp->plan = plan;
    sp->plan_arg = plan_arg;
    sp->done = done;
    sp->done_arg = arg;
    sp->round++;
    sp->running = sp->n;
    pthread_cond_broadcast(&sp->wake);
    pthread_mutex_unlock(&sp->mu);
}

mt_spec_result *mt_spec_take(mt_spec *sp, uint64_t seq)
{
    if (!sp->results || seq <= sp->base || seq > sp->base + sp->span) {
        return NULL;
    }
    mt_spec_result *r = sp->results[seq - sp->base - 1];
    sp->results[seq - sp->base - 1] = NULL;
    return r;
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
    }
    results_clear(sp);
    event_free(sp->done_ev);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->wake);
    pthread_cond_destroy(&sp->idle);
    free(sp->workers);
    free(sp);
}

#include <event2/event.h>
#include <event2/thread.h>
#include <signal.h>
#include <stdlib.h>
#include "mt_datacache.h"
#include "mt_diag.h"
#include "mt_loop.h"
#include "mt_mem.h"

struct mt_loop {
    struct event_base *base;
    struct event *wake;        /* activated from the store's writer thread */
    struct event *sig_term;
    struct event *sig_int;
    struct event *sig_hup;
    mt_store *store;           /* borrowed */
    void (*on_stop)(int sig, void *arg);
    void *stop_arg;
    void (*on_reload)(void *arg);
    void *reload_arg;
    bool stopping;
};

mt_err mt_loop_new(mt_loop **out)
{
    *out = NULL;
    if (evthread_use_pthreads()) {
        mt_error("loop: libevent has no pthreads support");
        return MT_EIO;
    }
    mt_loop *l = mt_xcalloc(1, sizeof *l);
    /*
     * After one callback of the lowest priority the loop polls again, so
     * work done in slices at that priority lets requests in between.
     *
     * With epoll, changes to the watched events are batched until the next
     * poll: a connection that stops reading to answer and starts again, as
     * every HTTP exchange does, then costs one epoll_ctl or none instead of
     * two or three. libevent warns this is unsafe for descriptors cloned
     * with dup(); the engine clones none.
     */
    struct event_config *cfg = event_config_new();
    if (cfg) {
        event_config_set_max_dispatch_interval(cfg, NULL, 1, MT_LOOP_PRIORITIES - 1);
        event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        l->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    if (!l->base || event_base_priority_init(l->base, MT_LOOP_PRIORITIES)) {
        if (l->base) {
            event_base_free(l->base);
        }
        free(l);
        mt_error("loop: cannot create an event base");
        return MT_EIO;
    }
    signal(SIGPIPE, SIG_IGN);
    *out = l;
    return MT_OK;
}

void mt_loop_free(mt_loop *l)
{
    if (!l) {
        return;
    }
    mt_loop_detach_store(l);
    if (l->sig_term) {
        event_free(l->sig_term);
    }
    if (l->sig_int) {
        event_free(l->sig_int);
    }
    if (l->sig_hup) {
        event_free(l->sig_hup);
    }
    event_base_free(l->base);
    free(l);
}

struct event_base *mt_loop_base(mt_loop *l)
{
    return l->base;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    mt_loop *l = arg;
    if (l->store) {
        mt_store_complete(l->store);
    }
    mt_datacache_reap();
}

/* Writer thread: only wakes the loop (event_active is thread-safe here). */
static void notify_from_writer(void *arg)
{
    mt_loop *l = arg;
    event_active(l->wake, EV_READ, 0);
}

void mt_loop_attach_store(mt_loop *l, mt_store *store)
{
    l->store = store;
    l->wake = event_new(l->base, -1, 0, on_wake, l);
    mt_store_set_notify(store, notify_from_writer, l);
}

void mt_loop_detach_store(mt_loop *l)
{
    if (!l->store) {
        return;
    }
    mt_store_set_notify(l->store, NULL, NULL);
    event_free(l->wake);
    l->wake = NULL;
    l->store = NULL;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    mt_loop *l = arg;
    if (l->stopping) {
        return;
    }
    l->stopping = true;
    mt_info("received %s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    if (l->on_stop) {
        l->on_stop((int) sig, l->stop_arg);
    }
    event_base_loopbreak(l->base);
}

void mt_loop_on_stop(mt_loop *l, void (*on_stop)(int sig, void *arg), void *arg)
{
    l->on_stop = on_stop;
    l->stop_arg = arg;
    l->sig_term = evsignal_new(l->base, SIGTERM, on_signal, l);
    l->sig_int = evsignal_new(l->base, SIGINT, on_signal, l);
    event_add(l->sig_term, NULL);
    event_add(l->sig_int, NULL);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void) sig;
    (void) what;
    mt_loop *l = arg;
    if (!l->stopping && l->on_reload) {
        l->on_reload(l->reload_arg);
    }
}

void mt_loop_on_reload(mt_loop *l, void (*on_reload)(void *arg), void *arg)
{
    l->on_reload = on_reload;
    l->reload_arg = arg;
    if (!l->sig_hup) {
        l->sig_hup = evsignal_new(l->base, SIGHUP, on_hup, l);
        event_add(l->sig_hup, NULL);
    }
}

int mt_loop_run(mt_loop *l)
{
    return event_base_dispatch(l->base) < 0 ? -1 : 0;
}

void mt_loop_stop(mt_loop *l)
{
    event_base_loopbreak(l->base);
}

void mt_loop_run_for(mt_loop *l, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(l->base, &tv);
    event_base_dispatch(l->base);
}

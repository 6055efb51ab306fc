/*
 * mt_http.h - the HTTP API (libevent evhttp): publish, read, health.
 *
 * Routes and their answers are specified in docs/http-api.md. Appends are
 * submitted to the store's writer as jobs and answered from their done
 * callbacks, i.e. only once durable. Long-polling readers (`wait=`) are
 * held here and answered when an append completes or their wait ends.
 * Runs entirely on the loop thread.
 */
#ifndef MT_HTTP_H
#define MT_HTTP_H
#include <stdint.h>
#include "mt_err.h"
#include "mt_loop.h"
#include "mt_store.h"
#include "mt_sub.h"

typedef struct mt_http mt_http;

typedef struct mt_http_opts {
    const char *host;     /* address to bind */
    uint16_t port;        /* 0 = any free port (see mt_http_port) */
    uint64_t max_body;    /* bytes; larger bodies get 413 */
} mt_http_opts;

/*
 * Binds and starts serving on 'loop'. 'store' is borrowed and must outlive
 * the server. Sets *out. MT_EUNAVAIL if the address cannot be bound
 * (logged with the OS reason), MT_EIO otherwise.
 */
mt_err mt_http_open(mt_loop *loop, mt_store *store, const mt_http_opts *opts, mt_http **out);

/*
 * Serves the subscriptions, dead-letter and table routes from 'subs'
 * (borrowed; NULL = none) and kicks it after every append.
 */
void mt_http_set_subs(mt_http *h, mt_subs *subs);

/* Answers held long polls that now have events (after appends made elsewhere). */
void mt_http_appended(mt_http *h);

/* The bound port. */
uint16_t mt_http_port(const mt_http *h);

/*
 * Stops accepting connections and answers every held long-poll now.
 * Requests already read keep going (appends after the store closed get 503).
 */
void mt_http_stop_accepting(mt_http *h);

/*
 * The store is about to be closed: from now on every request is answered
 * 503 without touching it (connections already open are still served while
 * the loop flushes answers).
 */
void mt_http_detach_store(mt_http *h);

/* Closes every connection and frees the server. NULL does nothing. */
void mt_http_close(mt_http *h);

#endif

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_diag.h"
#include "mt_event.h"
#include "mt_http.h"
#include "mt_log.h"
#include "mt_mem.h"
#include "mt_topic.h"
#include "mt_util.h"

#define READ_LIMIT_DEFAULT 100
#define READ_LIMIT_MAX 10000
#define WAIT_MAX_MS 60000
#define MAX_CE_HEADERS 64

typedef struct waiter waiter;
typedef struct sse_client sse_client;
typedef struct reply_waiter reply_waiter;
typedef struct pull_req pull_req;

#define SSE_MAX_TOPICS 16
#define NACK_DELAY_MAX_MS (24 * 3600 * 1000ull) /* as retry.max_backoff */
#define SSE_BUFFER_MAX (1u << 20)   /* unsent bytes per client before it is paused */
#define SSE_HEARTBEAT_S 15
#define SSE_PAGE 500                /* events read per pump */
#define SSE_RING 8192               /* recent events kept formatted for every stream (power of 2) */
#define SSE_FANOUT_US_PER_STREAM 15 /* fan-outs start 15 µs per stream apart (1000 streams: 15 ms) */
#define SSE_FANOUT_US_MAX 25000
#define SSE_FANOUT_SLICE 20         /* streams written per turn of the loop */
#define SSE_DRAIN_US 5000           /* how often a stream with a remainder looks again */
#define SSE_RING_BYTES (64u << 20)  /* the ring also stops at this many bytes of frames */
#define SSE_FRAME_MAX (64u << 10)   /* events with more data are not kept in the ring */
#define SSE_RING_TOPICS 64          /* distinct stream patterns the ring filters by, at most */

/*
 * One event formatted as a Server-Sent Events frame, once, for every stream
 * that sends it: streams add it to their output by reference. Counted: one
 * for the ring, one per output buffer holding it. Loop thread only.
 */
typedef struct sse_frame {
    uint64_t seq;
    int refs;
    const char *type;         /* NUL-terminated, inside 'mem' after the frame */
    size_t len;               /* of the frame text at 'mem' */
    char mem[];
} sse_frame;

struct mt_http {
    struct evhttp *http;
    struct evhttp_bound_socket *sock;  /* NULL once we stopped accepting */
    mt_loop *loop;                     /* borrowed */
    mt_store *store;                   /* borrowed */
    uint64_t max_body;
    uint16_t port;
    waiter *waiters;                   /* held long-polls, a doubly linked list */
    mt_subs *subs;                     /* borrowed; NULL = no subscriptions */
    sse_client *sse;                   /* Server-Sent Events clients, a doubly linked list */
    reply_waiter *replies;             /* requests waiting for a reply, a doubly linked list */
    pull_req *pulls;                   /* pull requests waiting for messages */
    bool draining;
    sse_frame **ring;                  /* SSE_RING slots: frames of events ring_first+1..ring_last */
    uint64_t ring_first, ring_last;
    size_t ring_bytes;                 /* of the frames in the ring */
    char **ring_topics;                /* owned: every pattern a stream asked for since the
                                          ring last started afresh; NULL/0 = not filtering */
    int ring_ntopics;
    bool ring_all;                     /* too many patterns: format every event */
    struct event *fanout;              /* sends new events to every stream (sse_appended) */
    int64_t fanout_at;                 /* monotonic µs of the last fan-out's start */
    sse_client *fan_next;              /* the next stream of the fan-out in progress, or NULL */
    bool fan_again;                    /* events came during a fan-out: another one follows */
    int nsse;                          /* streams in h->sse */
    struct event *accept_resume;       /* accepting again after running out of descriptors */
    mt_http *next_open;                /* in open_servers */
    bool fanout_due;                   /* made active, not yet run */
};

static void sse_pump(sse_client *c);
static void sse_appended(mt_http *h);
static void wake_pulls(mt_http *h);
static void on_accept_error(struct evconnlistener *lev, void *arg);

/* One Server-Sent Events stream: catch-up from 'after', then live. */
struct sse_client {
    mt_http *h;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    char *topics[SSE_MAX_TOPICS];       /* owned patterns */
    int ntopics;
    uint64_t after;                     /* last sequence looked at */
    struct event *heartbeat;
    struct event *drain;                /* watches a directly written remainder drain */
    bool pumping;                       /* a chunk callback or the drain watch is pending */
    sse_client *prev, *next;
};

/* A long-poll reader waiting for events after 'after'. */
struct waiter {
    mt_http *h;
    struct evhttp_request *req;
    uint64_t after;
    uint64_t limit;
    struct event *timer;
    struct event *gone;       /* the client's socket readable: it may have closed */
    waiter *prev, *next;
};

/* One publish request on its way through the writer. */
typedef struct append_job {
    mt_http *h;
    struct evhttp_request *req;
    mt_event_batch batch;
    mt_expect expect;
    mt_log_result *results;   /* batch.count entries */
    int64_t current;          /* stream version on conflict */
    uint64_t reply_wait_ms;   /* > 0: POST /events?wait=reply; answer with the reply */
    uint64_t primed;          /* the append's number from mt_subs_prime */
} append_job;

/* A request waiting for its reply: an event of type 'topic' correlated to 'id'. */
struct reply_waiter {
    mt_http *h;
    struct evhttp_request *req;
    char *topic;              /* owned: the request's replyto */
    char *id;                 /* owned: the request's id */
    uint64_t after;           /* log position checked so far */
    uint64_t sequence;        /* the request's */
    struct event *timer;
    struct event *gone;       /* the client's socket readable: it may have closed */
    reply_waiter *prev, *next;
};

/* ---- answers ---- */

static const char *reason_for(int code)
{
    switch (code) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    }
    return "Status";
}

static void reply(struct evhttp_request *req, int code, const char *ctype, const char *body,
                  size_t len)
{
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "Content-Type", ctype);
    evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    evhttp_send_reply(req, code, reason_for(code), NULL);
}

static void reply_json(struct evhttp_request *req, int code, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    mt_assert(text);
    reply(req, code, "application/json", text, strlen(text));
    free(text);
}

/* Answers {"error": error, "detail": detail}, plus any fields in 'extra' (stolen). */
static void reply_error_extra(struct evhttp_request *req, int code, const char *error,
                              json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void reply_error_extra(struct evhttp_request *req, int code, const char *error,
                              json_t *extra, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string(error));
    /* The detail may quote bytes of the request that are not UTF-8: the rest stays. */
    json_object_set_new(o, "detail", mt_diag_text(detail, strlen(detail)));
    if (extra) {
        json_object_update(o, extra);
        json_decref(extra);
    }
    reply_json(req, code, o);
}

#define reply_error(req, code, error, ...) \
    reply_error_extra(req, code, error, NULL, __VA_ARGS__)

/* ---- request helpers ---- */

/*
 * Reads an unsigned query parameter. Returns false (having answered 400)
 * when it is present and malformed or above 'max'.
 */
static bool query_u64(struct evhttp_request *req, struct evkeyvalq *q, const char *name,
                      uint64_t def, uint64_t min, uint64_t max, uint64_t *out)
{
    const char *v = evhttp_find_header(q, name);
    *out = def;
    if (!v) {
        return true;
    }
    if (mt_parse_u64(v, out) || *out < min || *out > max) {
        reply_error(req, 400, "invalid query parameter",
                    "'%s' must be a whole number from %llu to %llu, got '%.64s'", name,
                    (unsigned long long) min, (unsigned long long) max, v);
        return false;
    }
    return true;
}

static bool query_wait(struct evhttp_request *req, struct evkeyvalq *q, uint64_t *ms)
{
    const char *v = evhttp_find_header(q, "wait");
    *ms = 0;
    if (!v) {
        return true;
    }
    if (mt_parse_duration(v, ms) || *ms > WAIT_MAX_MS) {
        reply_error(req, 400, "invalid query parameter",
                    "'wait' must be a duration up to 60s such as '30s' or '500ms', got '%.64s'", v);
        return false;
    }
    return true;
}

/* Content type without parameters, lower-cased, into buf. */
static void media_type(const char *ct, char *buf, size_t len)
{
    size_t i = 0;
    for (; ct && ct[i] && ct[i] != ';' && i + 1 < len; i++) {
        buf[i] = (char) tolower((unsigned char) ct[i]);
    }
    while (i > 0 && isspace((unsigned char) buf[i - 1])) {
        i--;
    }
    buf[i] = '\0';
}

/* ---- reading ---- */

typedef struct read_out {
    mt_buf buf;
    uint64_t count;
    uint64_t last;
} read_out;

static int add_event(const mt_event *ev, void *arg)
{
    read_out *o = arg;
    mt_buf_adds(&o->buf, o->count ? "," : "[");
    mt_event_to_json(ev, &o->buf);
    o->count++;
    o->last = ev->sequence;
    return 0;
}

static void reply_events(struct evhttp_request *req, read_out *o, uint64_t head)
{
    if (o->count == 0) {
        mt_buf_adds(&o->buf, "[");
    }
    mt_buf_adds(&o->buf, "]");
    char hs[24];
    snprintf(hs, sizeof hs, "%llu", (unsigned long long) head);
    evhttp_add_header(evhttp_request_get_output_headers(req), "moontide-head", hs);
    reply(req, 200, "application/cloudevents-batch+json", o->buf.data, o->buf.len);
}

/* Reads the log after 'after'. Returns false (having answered 500) on a store error. */
static bool read_log(mt_http *h, struct evhttp_request *req, uint64_t after, uint64_t limit,
                     read_out *o, uint64_t *head)
{
    mt_buf_init(&o->buf);
    o->count = 0;
    o->last = after;
    *head = 0;
    mt_txn *t;
    if (mt_store_read_begin(h->store, &t)) {
        reply_error(req, 500, "storage error", "cannot begin a read transaction");
        return false;
    }
    int rc = mt_log_read(t, after, limit, add_event, o);
    if (rc == 0) {
        rc = mt_log_head(t, head) ? -1 : 0;
    }
    mt_store_read_end(t);
    if (rc) {
        mt_buf_free(&o->buf);
        reply_error(req, 500, "storage error", "reading the log failed (see the engine's log)");
        return false;
    }
    return true;
}

static void waiter_free(waiter *w)
{
    mt_http *h = w->h;
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        h->waiters = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    event_free(w->timer);
    if (w->gone) {
        event_free(w->gone);
    }
    free(w);
}

/*
 * Watches the socket of a request that waits with no answer started:
 * libevent does not look at such a connection, so a client that closed it
 * held its descriptor until the wait ended (up to 60 s), and with a low
 * open-file limit abandoned waits locked everyone out. 'cb' runs once when
 * the socket becomes readable and should ask client_gone. NULL if the
 * request has no socket.
 */
static struct event *watch_gone(struct evhttp_request *req, event_callback_fn cb, void *arg)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0) {
        return NULL;
    }
    struct event *ev = event_new(evhttp_connection_get_base(evcon), fd, EV_READ, cb, arg);
    event_add(ev, NULL);
    return ev;
}

/*
 * Whether the client of a watched socket has gone: the end of the stream or
 * an error. Anything else (a pipelined request) is left for libevent, which
 * reads what follows once it answers; the watch is not re-armed.
 */
static bool client_gone(evutil_socket_t fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return !(n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)));
}

static void on_waiter_gone(evutil_socket_t fd, short what, void *arg)
{
    waiter *w = arg;
    if (client_gone(fd)) {
        struct evhttp_connection *evcon = evhttp_request_get_connection(w->req);
        waiter_free(w);
        evhttp_connection_free(evcon);
    }
}

/* Answers a waiter with whatever is there now (possibly nothing) and frees it. */
static void waiter_answer(waiter *w)
{
    read_out o;
    uint64_t head;
    if (read_log(w->h, w->req, w->after, w->limit, &o, &head)) {
        reply_events(w->req, &o, head);
        mt_buf_free(&o.buf);
    }
    waiter_free(w);
}

static void on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    waiter_answer(arg);
}

/* Called after appends: answers every waiter that now has events. */
static void wake_waiters(mt_http *h, uint64_t head)
{
    for (waiter *w = h->waiters, *next; w; w = next) {
        next = w->next;
        if (head > w->after) {
            waiter_answer(w);
        }
    }
}

static void handle_read_events(mt_http *h, struct evhttp_request *req, struct evkeyvalq *q)
{
    uint64_t after, limit, wait_ms;
    if (!query_u64(req, q, "after", 0, 0, UINT64_MAX - 1, &after) ||
        !query_u64(req, q, "limit", READ_LIMIT_DEFAULT, 1, READ_LIMIT_MAX, &limit) ||
        !query_wait(req, q, &wait_ms)) {
        return;
    }
    read_out o;
    uint64_t head;
    if (!read_log(h, req, after, limit, &o, &head)) {
        return;
    }
    if (o.count == 0 && wait_ms > 0 && !h->draining) {
        mt_buf_free(&o.buf);
        waiter *w = mt_xcalloc(1, sizeof *w);
        w->h = h;
        w->req = req;
        w->after = after;
        w->limit = limit;
        struct evhttp_connection *evcon = evhttp_request_get_connection(req);
        struct event_base *base = evhttp_connection_get_base(evcon);
        w->timer = evtimer_new(base, on_wait_timeout, w);
        struct timeval tv = {(time_t) (wait_ms / 1000), (suseconds_t) (wait_ms % 1000) * 1000};
        evtimer_add(w->timer, &tv);
        w->gone = watch_gone(req, on_waiter_gone, w);
        w->next = h->waiters;
        if (h->waiters) {
            h->waiters->prev = w;
        }
        h->waiters = w;
        return;
    }
    reply_events(req, &o, head);
    mt_buf_free(&o.buf);
}

static void handle_read_stream(mt_http *h, struct evhttp_request *req, const char *raw_subject,
                               struct evkeyvalq *q)
{
    uint64_t from, limit;
    if (!query_u64(req, q, "from", 0, 0, UINT64_MAX, &from) ||
        !query_u64(req, q, "limit", READ_LIMIT_DEFAULT, 1, READ_LIMIT_MAX, &limit)) {
        return;
    }
    size_t n = 0;
    char *subject = evhttp_uridecode(raw_subject, 0, &n);
    if (!subject || n == 0 || strlen(subject) != n || n > MT_EVENT_MAX_SUBJECT) {
        free(subject);
        reply_error(req, 400, "invalid subject",
                    "the subject in the path must be 1 to %d bytes without NUL",
                    MT_EVENT_MAX_SUBJECT);
        return;
    }
    mt_txn *t;
    if (mt_store_read_begin(h->store, &t)) {
        free(subject);
        reply_error(req, 500, "storage error", "cannot begin a read transaction");
        return;
    }
    bool exists;
    uint64_t version, head = 0;
    read_out o = {.count = 0};
    mt_buf_init(&o.buf);
    int rc = mt_log_stream_head(t, subject, &exists, &version) ? -1 : 0;
    if (rc == 0 && exists) {
        rc = mt_log_read_stream(t, subject, from, limit, add_event, &o);
    }
    if (rc == 0) {
        rc = mt_log_head(t, &head) ? -1 : 0;
    }
    mt_store_read_end(t);
    if (rc) {
        reply_error(req, 500, "storage error", "reading the stream failed (see the engine's log)");
    } else if (!exists) {
        reply_error(req, 404, "stream not found", "no events with subject '%.400s'", subject);
    } else {
        reply_events(req, &o, head);
    }
    mt_buf_free(&o.buf);
    free(subject);
}

static void handle_health(mt_http *h, struct evhttp_request *req)
{
    mt_txn *t;
    uint64_t head = 0;
    if (mt_store_read_begin(h->store, &t) == MT_OK) {
        mt_log_head(t, &head);
        mt_store_read_end(t);
    }
    char hs[24];
    snprintf(hs, sizeof hs, "%llu", (unsigned long long) head);
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(h->draining ? "draining" : "ok"));
    json_object_set_new(o, "head", json_string(hs));
    reply_json(req, h->draining ? 503 : 200, o);
}

/* ---- publishing ---- */

/* ---- request/reply ---- */

static void reply_waiter_free(reply_waiter *w)
{
    mt_http *h = w->h;
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        h->replies = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    event_free(w->timer);
    if (w->gone) {
        event_free(w->gone);
    }
    free(w->topic);
    free(w->id);
    free(w);
}

static void on_reply_timeout(evutil_socket_t fd, short what, void *arg)
{
    reply_waiter *w = arg;
    reply_error(w->req, 504, "reply timeout",
                "no event of type '%.200s' with correlationid '%.200s' arrived in time", w->topic,
                w->id);
    reply_waiter_free(w);
}

static void on_reply_waiter_gone(evutil_socket_t fd, short what, void *arg)
{
    reply_waiter *w = arg;
    if (client_gone(fd)) {
        struct evhttp_connection *evcon = evhttp_request_get_connection(w->req);
        reply_waiter_free(w);
        evhttp_connection_free(evcon);
    }
}

typedef struct reply_search {
    reply_waiter *w;
    mt_txn *t;
    mt_buf found;             /* the reply as JSON, once found */
    uint64_t last;
} reply_search;

/*
 * Whether 'ev', emitted by a handler (source /moontide/subscriptions/NAME,
 * id NAME[~K]:SEQ:N, mt_fx), answers another request of the same id: its
 * trigger, log sequence SEQ, is an event of that id other than the
 * request (sequence 'seq'). A correlation id is only the request's id,
 * which another source may use too: two such requests both took the first
 * one's reply. A reply further down a chain of handlers (its trigger an
 * event the request's handler emitted) still answers.
 */
static bool answers_another(mt_txn *t, const mt_event *ev, const char *id, uint64_t seq)
{
    static const char pfx[] = "/moontide/subscriptions/";
    if (strncmp(ev->attr[MT_ATTR_SOURCE], pfx, sizeof pfx - 1) != 0) {
        return false; /* published by a service: the correlation id is all there is */
    }
    const char *eid = ev->attr[MT_ATTR_ID];
    const char *last = strrchr(eid, ':');
    const char *p = last;
    while (p > eid && p[-1] != ':') {
        p--;
    }
    if (!last || p == eid) {
        return false;
    }
    char *end;
    errno = 0;
    unsigned long long trigger = strtoull(p, &end, 10);
    if (end != last || errno || trigger == seq) {
        return false;
    }
    mt_event tr;
    return mt_log_get(t, trigger, &tr) == MT_OK && strcmp(tr.attr[MT_ATTR_ID], id) == 0;
}

static int reply_visit(const mt_event *ev, void *arg)
{
    reply_search *r = arg;
    r->last = ev->sequence;
    const char *corr = ev->attr[MT_ATTR_CORRELATIONID];
    if (corr && strcmp(ev->attr[MT_ATTR_TYPE], r->w->topic) == 0 && strcmp(corr, r->w->id) == 0 &&
        !answers_another(r->t, ev, r->w->id, r->w->sequence)) {
        mt_event_to_json(ev, &r->found);
        return 1;
    }
    return 0;
}

/* Looks for the waiter's reply in what was appended since it last looked. */
static void reply_check(reply_waiter *w)
{
    mt_http *h = w->h;
    mt_txn *t;
    if (!h->store || mt_store_read_begin(h->store, &t)) {
        return;
    }
    reply_search r = {w, t, {0}, w->after};
    mt_buf_init(&r.found);
    int rc;
    do {
        uint64_t before = r.last;
        rc = mt_log_read(t, r.last, 1000, reply_visit, &r);
        if (rc == 0 && r.last == before) {
            break;
        }
    } while (rc == 0);
    mt_store_read_end(t);
    w->after = r.last;
    if (rc == 1) {
        reply(w->req, 200, "application/cloudevents+json", r.found.data, r.found.len);
        reply_waiter_free(w);
    }
    mt_buf_free(&r.found);
}

static void replies_check(mt_http *h)
{
    for (reply_waiter *w = h->replies, *next; w; w = next) {
        next = w->next;
        reply_check(w);
    }
}

/* The request was appended (or was a duplicate): wait for its reply. */
static void reply_wait(append_job *j)
{
    mt_http *h = j->h;
    mt_event ev;
    mt_event_decode(j->batch.buf.data + j->batch.off[0], j->batch.len[0], &ev);
    reply_waiter *w = mt_xcalloc(1, sizeof *w);
    w->h = h;
    w->req = j->req;
    w->topic = mt_xstrdup(ev.attr[MT_ATTR_REPLYTO]);
    w->id = mt_xstrdup(ev.attr[MT_ATTR_ID]);
    w->after = j->results[0].sequence;
    w->sequence = j->results[0].sequence;
    w->timer = evtimer_new(evhttp_connection_get_base(evhttp_request_get_connection(j->req)),
                           on_reply_timeout, w);
    struct timeval tv = {(time_t) (j->reply_wait_ms / 1000),
                         (suseconds_t) (j->reply_wait_ms % 1000) * 1000};
    evtimer_add(w->timer, &tv);
    w->gone = watch_gone(w->req, on_reply_waiter_gone, w);
    w->next = h->replies;
    if (h->replies) {
        h->replies->prev = w;
    }
    h->replies = w;
    reply_check(w);
}

static mt_err append_run(mt_txn *t, void *arg)
{
    append_job *j = arg;
    return mt_log_append(t, &j->batch, &j->expect, j->results, &j->current);
}

static void append_job_free(append_job *j)
{
    mt_event_batch_free(&j->batch);
    free(j->results);
    free(j);
}

static void append_done(mt_err rc, void *arg)
{
    append_job *j = arg;
    mt_http *h = j->h;
    struct evhttp_request *req = j->req;
    if (rc == MT_ECONFLICT) {
        mt_event ev;
        mt_event_decode(j->batch.buf.data + j->batch.off[0], j->batch.len[0], &ev);
        json_t *extra = json_object();
        json_object_set_new(extra, "subject", json_string(ev.attr[MT_ATTR_SUBJECT]));
        json_object_set_new(extra, "current", json_integer(j->current));
        reply_error_extra(req, 409, "wrong expected version", extra,
                          "stream '%.400s' is at version %lld", ev.attr[MT_ATTR_SUBJECT],
                          (long long) j->current);
    } else if (rc == MT_EINVAL) {
        reply_error(req, 400, "invalid expected version",
                    "moontide-expected-version needs every event to have the same subject");
    } else if (rc == MT_EFULL) {
        reply_error(req, 507, "store full",
                    "the store has no room for these events: engine.map_size is reached, or the "
                    "data directory's file system is full (the engine's log says which); nothing "
                    "was appended");
    } else if (rc == MT_ETOOBIG) {
        reply_error(req, 413, "body too large",
                    "the events are larger than the write-ahead file (engine.wal_size) can take; "
                    "nothing was appended");
    } else if (rc == MT_ECLOSED) {
        reply_error(req, 503, "shutting down", "the engine is stopping; nothing was appended");
    } else if (rc) {
        reply_error(req, 500, "storage error", "append failed (%s); nothing was appended",
                    mt_err_str(rc));
    } else if (j->reply_wait_ms && h->draining) {
        /* Appended as the engine stops (mt_store_close runs the last jobs). */
        reply_error(req, 503, "shutting down",
                    "the engine is stopping before the reply arrived; the request was stored");
    } else if (j->reply_wait_ms) {
        reply_wait(j);
        mt_http_appended(h);
        mt_subs_kick_after(h->subs, j->primed);
    } else {
        /* Written member by member: this answers every publish. */
        mt_buf out;
        mt_buf_init(&out);
        mt_buf_adds(&out, "{\"events\":[");
        bool any_new = false;
        uint64_t last = 0;
        for (int i = 0; i < j->batch.count; i++) {
            mt_event ev;
            mt_event_decode(j->batch.buf.data + j->batch.off[i], j->batch.len[i], &ev);
            mt_log_result *r = &j->results[i];
            mt_buf_adds(&out, i ? ",{\"id\":" : "{\"id\":");
            bool utf8 = mt_event_json_string(&out, ev.attr[MT_ATTR_ID], strlen(ev.attr[MT_ATTR_ID]));
            mt_assert(utf8); /* parsed from JSON or checked as a header */
            mt_buf_adds(&out, ",\"sequence\":\"");
            mt_buf_add_u64(&out, r->sequence);
            mt_buf_adds(&out, "\"");
            if (r->has_subject) {
                mt_buf_adds(&out, ",\"streamversion\":");
                mt_buf_add_u64(&out, r->streamversion);
            }
            if (r->duplicate) {
                mt_buf_adds(&out, ",\"duplicate\":true");
            } else {
                any_new = true;
                last = r->sequence > last ? r->sequence : last;
            }
            mt_buf_adds(&out, "}");
        }
        mt_buf_adds(&out, "]}");
        reply(req, any_new ? 201 : 200, "application/json", out.data, out.len);
        mt_buf_free(&out);
        if (any_new) {
            wake_waiters(h, last);
            sse_appended(h);
            wake_pulls(h);
            replies_check(h);
            mt_subs_kick_after(h->subs, j->primed);
        }
    }
    append_job_free(j);
}

/* Collects the ce-* headers of a binary-mode request. Returns their count. */
static int binary_attrs(struct evhttp_request *req, char **names, char **values, bool *bad,
                        char *err, size_t errlen)
{
    int n = 0;
    *bad = false;
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = ih->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strncasecmp(kv->key, "ce-", 3) != 0) {
            continue;
        }
        if (n == MAX_CE_HEADERS) {
            snprintf(err, errlen, "more than %d ce- headers", MAX_CE_HEADERS);
            *bad = true;
            return n;
        }
        size_t len = 0;
        char *v = evhttp_uridecode(kv->value, 0, &len);
        if (!v || strlen(v) != len) {
            free(v);
            snprintf(err, errlen, "header '%.64s': bad percent-encoding", kv->key);
            *bad = true;
            return n;
        }
        char *name = mt_xstrdup(kv->key + 3);
        for (char *c = name; *c; c++) {
            *c = (char) tolower((unsigned char) *c);
        }
        names[n] = name;
        values[n] = v;
        n++;
    }
    return n;
}

static void handle_publish(mt_http *h, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > h->max_body) {
        reply_error(req, 413, "body too large", "the body has %zu bytes; the limit is %llu", len,
                    (unsigned long long) h->max_body);
        return;
    }
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
    const char *ct = evhttp_find_header(ih, "Content-Type");
    char mt[128];
    media_type(ct, mt, sizeof mt);
    const char *body = len ? (const char *) evbuffer_pullup(in, -1) : "";

    append_job *j = mt_xcalloc(1, sizeof *j);
    j->h = h;
    j->req = req;
    mt_event_batch_init(&j->batch);
    char err[768] = "";
    mt_err rc;
    if (strcmp(mt, "application/cloudevents+json") == 0) {
        rc = mt_event_parse_structured(body, len, &j->batch, err, sizeof err);
    } else if (strcmp(mt, "application/cloudevents-batch+json") == 0) {
        rc = mt_event_parse_batch(body, len, &j->batch, err, sizeof err);
    } else if (evhttp_find_header(ih, "ce-specversion")) {
        char *names[MAX_CE_HEADERS], *values[MAX_CE_HEADERS];
        bool bad;
        int n = binary_attrs(req, names, values, &bad, err, sizeof err);
        rc = bad ? MT_EINVAL
                 : mt_event_parse_binary((const char *const *) names, (const char *const *) values,
                                         n, ct, body, len, &j->batch, err, sizeof err);
        for (int i = 0; i < n; i++) {
            free(names[i]);
            free(values[i]);
        }
    } else {
        append_job_free(j);
        reply_error(req, 415, "unsupported content type",
                    "'%.100s' is not a CloudEvents mode: use application/cloudevents+json, "
                    "application/cloudevents-batch+json, or binary mode with ce-* headers",
                    ct ? ct : "(none)");
        return;
    }
    if (rc == MT_ENOMEM) {
        append_job_free(j);
        reply_error(req, 507, "out of memory", "the engine could not allocate room for the body");
        return;
    }
    if (rc) {
        append_job_free(j);
        reply_error(req, 400, "malformed event", "%s", err);
        return;
    }
    const char *ev_hdr = evhttp_find_header(ih, "moontide-expected-version");
    if (ev_hdr && mt_log_parse_expect(ev_hdr, &j->expect)) {
        append_job_free(j);
        reply_error(req, 400, "invalid expected version",
                    "moontide-expected-version must be any, no_stream, exists or a version "
                    "number, got '%.64s'", ev_hdr);
        return;
    }
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *query = evhttp_uri_get_query(uri);
    if (query) {
        evhttp_parse_query_str(query, &q);
    }
    const char *wait = evhttp_find_header(&q, "wait");
    bool bad = false;
    if (wait && strcmp(wait, "reply") != 0) {
        reply_error(req, 400, "invalid query parameter", "'wait' on POST /events must be 'reply'");
        bad = true;
    } else if (wait) {
        const char *to = evhttp_find_header(&q, "timeout");
        j->reply_wait_ms = 5000;
        mt_event ev;
        mt_event_decode(j->batch.buf.data + j->batch.off[0], j->batch.len[0], &ev);
        if (to && (mt_parse_duration(to, &j->reply_wait_ms) || j->reply_wait_ms == 0 ||
                   j->reply_wait_ms > WAIT_MAX_MS)) {
            reply_error(req, 400, "invalid query parameter",
                        "'timeout' must be a duration from 1ms to 60s, got '%.64s'", to);
            bad = true;
        } else if (j->batch.count != 1 || !ev.attr[MT_ATTR_REPLYTO]) {
            reply_error(req, 400, "invalid request",
                        "wait=reply needs exactly one event with a 'replyto' attribute");
            bad = true;
        }
    }
    evhttp_clear_headers(&q);
    if (bad) {
        append_job_free(j);
        return;
    }
    j->results = mt_xcalloc((size_t) j->batch.count, sizeof *j->results);
    /* Repeatable: the results are rewritten on every run (mt_store.h). */
    rc = mt_store_submit_repeatable(h->store, append_run, append_done, j);
    if (rc) {
        append_job_free(j);
        reply_error(req, 503, "shutting down", "the engine is stopping; nothing was appended");
        return;
    }
    j->primed = mt_subs_prime(h->subs);
}

static void method_not_allowed(struct evhttp_request *req, const char *allow);

/* ---- subscriptions, dead letters, tables ---- */

/* Splits "/subscriptions/NAME[/REST]" into a decoded name and the raw rest. */
static char *path_segment(const char *p, const char **rest)
{
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t) (slash - p) : strlen(p);
    *rest = slash ? slash : "";
    char *raw = mt_xstrndup(p, n);
    size_t len = 0;
    char *dec = evhttp_uridecode(raw, 0, &len);
    free(raw);
    if (!dec || len == 0 || strlen(dec) != len) {
        free(dec);
        return NULL;
    }
    return dec;
}

/* A PUT or DELETE of a subscription waiting for its writer job. */
typedef struct def_req {
    mt_http *h;
    struct evhttp_request *req;
    char *name;               /* owned */
} def_req;

static void handle_subscriptions(mt_http *h, struct evhttp_request *req, const char *name)
{
    mt_txn *t;
    if (!h->subs || mt_store_read_begin(h->store, &t)) {
        if (!h->subs && !name) {
            reply_json(req, 200, json_array());
            return;
        }
        if (!h->subs) {
            reply_error(req, 404, "subscription not found", "no subscription '%.64s'", name);
            return;
        }
        reply_error(req, 500, "storage error", "cannot begin a read transaction");
        return;
    }
    json_t *o;
    mt_err rc = mt_subs_status(h->subs, t, name, &o);
    mt_store_read_end(t);
    if (rc == MT_ENOTFOUND) {
        reply_error(req, 404, "subscription not found", "no subscription '%.64s'", name);
    } else if (rc) {
        reply_error(req, 500, "storage error", "%s", mt_err_str(rc));
    } else {
        reply_json(req, 200, o);
    }
}

/* Answers a PUT or DELETE once the change is stored and in effect. */
static void def_answer(mt_err rc, json_t *result, void *arg)
{
    def_req *d = arg;
    struct evhttp_request *req = d->req;
    if (rc) {
        reply_error(req, rc == MT_EFULL ? 507 : rc == MT_ECLOSED ? 503 : 500, "storage error",
                    "%s", mt_err_str(rc));
    } else if (json_is_true(json_object_get(result, "deleted"))) {
        evhttp_send_reply(req, 204, "No Content", NULL);
    } else {
        mt_txn *t;
        json_t *o = NULL;
        /* Done as the engine stops (the store detached): the name is all there is to say. */
        if (d->h->store && d->h->subs && mt_store_read_begin(d->h->store, &t) == MT_OK) {
            mt_subs_status(d->h->subs, t, d->name, &o);
            mt_store_read_end(t);
        }
        if (!o) {
            o = json_pack("{ss}", "name", d->name);
        }
        reply_json(req, json_is_true(json_object_get(result, "created")) ? 201 : 200, o);
    }
    free(d->name);
    free(d);
}

static void reply_def_errors(struct evhttp_request *req, mt_err rc, mt_topo_errs *errs,
                             const char *name)
{
    json_t *lines = json_array();
    for (int i = 0; i < errs->count; i++) {
        json_t *l = json_string(errs->lines[i]);
        json_array_append_new(lines, l ? l : json_string("(not UTF-8)"));
    }
    json_t *extra = json_pack("{so}", "errors", lines);
    const char *first = errs->count ? errs->lines[0] : mt_err_str(rc);
    if (rc == MT_EEXISTS) {
        reply_error_extra(req, 409, "conflict", extra, "%s", first);
    } else if (rc == MT_ECLOSED) {
        json_decref(extra);
        reply_error(req, 503, "shutting down", "the engine is stopping");
    } else if (rc == MT_ENOTFOUND) {
        json_decref(extra);
        reply_error(req, 404, "subscription not found", "no subscription '%.64s'", name);
    } else {
        reply_error_extra(req, rc == MT_ECONFIG ? 400 : 500, "invalid subscription", extra,
                          "%s%s", first, errs->count > 1 ? " (and more: see errors)" : "");
    }
}

/* PUT /subscriptions/{name} (a JSON definition) and DELETE /subscriptions/{name}. */
static void handle_sub_change(mt_http *h, struct evhttp_request *req, const char *name, bool put)
{
    if (!h->subs) {
        reply_error(req, 503, "unavailable", "subscriptions are not running");
        return;
    }
    mt_topo_errs errs = {0};
    def_req *d = mt_xcalloc(1, sizeof *d);
    *d = (def_req){h, req, mt_xstrdup(name)};
    mt_err rc;
    if (put) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
        char mt[128];
        media_type(ct, mt, sizeof mt);
        if (len > h->max_body) {
            reply_error(req, 413, "body too large", "the body has %zu bytes; the limit is %llu",
                        len, (unsigned long long) h->max_body);
            rc = MT_OK;
            goto refused;
        }
        if (ct && strcmp(mt, "application/json") != 0) {
            reply_error(req, 415, "unsupported content type",
                        "a subscription definition is application/json, not '%.100s'", ct);
            rc = MT_OK;
            goto refused;
        }
        const char *body = len ? (const char *) evbuffer_pullup(in, -1) : "";
        rc = mt_subs_put(h->subs, name, body, len, &errs, def_answer, d);
    } else {
        rc = mt_subs_delete(h->subs, name, &errs, def_answer, d);
    }
    if (rc == MT_OK) {
        mt_topo_errs_free(&errs);
        return;
    }
    reply_def_errors(req, rc, &errs, name);
refused:
    mt_topo_errs_free(&errs);
    free(d->name);
    free(d);
}

static void dlq_answer(mt_err rc, uint64_t count, void *arg)
{
    struct evhttp_request *req = arg;
    if (rc == MT_ENOTFOUND) {
        reply_error(req, 404, "dead letter not found",
                    "the subscription has no dead letter of the sequence asked for");
        return;
    }
    if (rc) {
        reply_error(req, rc == MT_EFULL ? 507 : 500, "storage error", "%s", mt_err_str(rc));
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "count", json_integer((json_int_t) count));
    reply_json(req, 200, o);
}

/* ---- pull consumers ---- */

struct pull_req {
    mt_http *h;
    struct evhttp_request *req;
    char *name;               /* owned */
    uint32_t max;
    int64_t deadline_us;      /* monotonic; 0 = answer at once */
    struct event *timer;      /* set while waiting between two looks */
    struct event *gone;       /* the client's socket readable: it may have closed */
    bool client_gone;         /* ... and it had, while a look was on the writer */
    pull_req *prev, *next;    /* in h->pulls while waiting */
};

static void pull_unlink(pull_req *p)
{
    mt_http *h = p->h;
    if (h->pulls == p || p->prev) {
        if (p->prev) {
            p->prev->next = p->next;
        } else {
            h->pulls = p->next;
        }
        if (p->next) {
            p->next->prev = p->prev;
        }
    }
    p->prev = p->next = NULL;
}

static void pull_req_free(pull_req *p)
{
    pull_unlink(p);
    if (p->timer) {
        event_free(p->timer);
    }
    if (p->gone) {
        event_free(p->gone);
    }
    free(p->name);
    free(p);
}

static void pull_submit(pull_req *p);

/* New events: waiting pulls look at once. */
static void wake_pulls(mt_http *h)
{
    for (pull_req *p = h->pulls; p; p = p->next) {
        event_active(p->timer, EV_TIMEOUT, 0);
    }
}

static void on_pull_timer(evutil_socket_t fd, short what, void *arg)
{
    pull_req *p = arg;
    evtimer_del(p->timer); /* woken early by wake_pulls: the timeout must not fire too */
    pull_unlink(p);
    pull_submit(p);
}

/* Frees a pull whose client has gone, with its connection. */
static void pull_drop(pull_req *p)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
    pull_req_free(p);
    evhttp_connection_free(evcon);
}

static void on_pull_gone(evutil_socket_t fd, short what, void *arg)
{
    pull_req *p = arg;
    if (!client_gone(fd)) {
        return;
    }
    if (p->timer && evtimer_pending(p->timer, NULL)) {
        pull_drop(p); /* waiting between two looks */
    } else {
        p->client_gone = true; /* a look is on the writer: pull_answer drops it */
    }
}

static void pull_answer(mt_err rc, json_t *result, void *arg)
{
    pull_req *p = arg;
    if (p->client_gone && (rc || json_array_size(json_object_get(result, "items")) == 0)) {
        pull_drop(p); /* nothing to hand over: no need to wait on */
        return;
    }
    /* Items leased to a client that has gone are written (a half-closed one reads them;
     * otherwise the write fails and evhttp frees the connection) and come back with their leases. */
    if (rc) {
        reply_error(p->req, rc == MT_ECLOSED ? 503 : 500, "pull failed", "%s", mt_err_str(rc));
        pull_req_free(p);
        return;
    }
    json_t *items = json_object_get(result, "items");
    int64_t left = p->deadline_us - mt_mono_us();
    if (json_array_size(items) == 0 && left > 0 && p->h->store && !p->h->draining) {
        /*
         * Nothing yet: look again when the next queued message falls due
         * (an embargo, a lease, a nack), at new events (wake_pulls), and
         * every 100 ms in any case.
         */
        if (!p->timer) {
            p->timer = evtimer_new(evhttp_connection_get_base(evhttp_request_get_connection(p->req)),
                                   on_pull_timer, p);
        }
        int64_t wait = left < 100000 ? left : 100000;
        int64_t due = json_integer_value(json_object_get(result, "next_due_us"));
        if (due > 0 && due - mt_now_us() < wait) {
            wait = due - mt_now_us() > 0 ? due - mt_now_us() : 0;
        }
        struct timeval tv = {0, (suseconds_t) wait};
        evtimer_add(p->timer, &tv);
        if (!p->gone) {
            p->gone = watch_gone(p->req, on_pull_gone, p);
        }
        p->next = p->h->pulls;
        if (p->h->pulls) {
            p->h->pulls->prev = p;
        }
        p->h->pulls = p;
        return;
    }
    /* Built by hand so each event's exact text is spliced in. */
    mt_buf b;
    mt_buf_init(&b);
    mt_buf_adds(&b, "[");
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        /* Tokens are "SEQ-HEX" (mt_parked_token): nothing in them needs escaping. */
        json_t *raw = json_object_get(item, "raw");
        mt_buf_adds(&b, i ? ",{\"lease\":\"" : "{\"lease\":\"");
        mt_buf_adds(&b, json_string_value(json_object_get(item, "lease")));
        mt_buf_adds(&b, "\",\"attempt\":");
        mt_buf_add_u64(&b, (uint64_t) json_integer_value(json_object_get(item, "attempt")));
        mt_buf_adds(&b, ",\"event\":");
        mt_buf_add(&b, json_string_value(raw), json_string_length(raw));
        mt_buf_adds(&b, "}");
    }
    mt_buf_adds(&b, "]");
    reply(p->req, 200, "application/json", b.data, b.len);
    mt_buf_free(&b);
    pull_req_free(p);
}

static void pull_submit(pull_req *p)
{
    mt_err rc = p->h->subs && p->h->store ? mt_subs_pull(p->h->subs, p->name, p->max, pull_answer, p)
                                          : MT_ECLOSED;
    if (rc) {
        pull_answer(rc, NULL, p);
    }
}

static void handle_lease_op(mt_http *h, struct evhttp_request *req, const char *name,
                            mt_lease_op op);

static void handle_dlq(mt_http *h, struct evhttp_request *req, const char *name,
                       const char *rest, struct evkeyvalq *q)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool reading = strcmp(rest, "/dlq") == 0 && (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD);
    const char *why = h->subs ? mt_subs_not_started(h->subs, name) : NULL;
    if (why && !reading) {
        reply_error(req, 409, "subscription not running",
                    "subscription '%.64s' did not start (%.300s); its dead letters can be read, "
                    "and change once a PUT gives it a definition that loads", name, why);
        return;
    }
    if (!h->subs || (!why && !mt_subs_has(h->subs, name))) {
        reply_error(req, 404, "subscription not found", "no subscription '%.64s'", name);
        return;
    }
    uint64_t seq, after, limit;
    /* 0 means "every dead letter" to what follows: it must not be asked for by name. */
    if (!query_u64(req, q, "sequence", 0, 1, UINT64_MAX, &seq)) {
        return;
    }
    if (strcmp(rest, "/dlq") == 0 && (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD)) {
        if (!query_u64(req, q, "after", 0, 0, UINT64_MAX - 1, &after) ||
            !query_u64(req, q, "limit", READ_LIMIT_DEFAULT, 1, READ_LIMIT_MAX, &limit)) {
            return;
        }
        mt_txn *t;
        if (mt_store_read_begin(h->store, &t)) {
            reply_error(req, 500, "storage error", "cannot begin a read transaction");
            return;
        }
        json_t *a;
        mt_err rc = mt_subs_dlq_list(h->subs, t, name, after, limit, &a);
        mt_store_read_end(t);
        if (rc) {
            reply_error(req, 500, "storage error", "%s", mt_err_str(rc));
        } else {
            reply_json(req, 200, a);
        }
    } else if (strcmp(rest, "/dlq") == 0 && cmd == EVHTTP_REQ_DELETE) {
        if (mt_subs_dlq_purge(h->subs, name, seq, dlq_answer, req)) {
            reply_error(req, 503, "shutting down", "the engine is stopping");
        }
    } else if (strcmp(rest, "/dlq/redrive") == 0 && cmd == EVHTTP_REQ_POST) {
        if (mt_subs_dlq_redrive(h->subs, name, seq, dlq_answer, req)) {
            reply_error(req, 503, "shutting down", "the engine is stopping");
        }
    } else if (strcmp(rest, "/pull") == 0 && cmd == EVHTTP_REQ_POST) {
        uint64_t max, wait_ms;
        if (!mt_subs_is_pull(h->subs, name)) {
            reply_error(req, 409, "not a pull subscription",
                        "subscription '%.64s' delivers to a handler; declare deliver: pull", name);
            return;
        }
        if (!query_u64(req, q, "max", 10, 1, 1000, &max) || !query_wait(req, q, &wait_ms)) {
            return;
        }
        pull_req *p = mt_xcalloc(1, sizeof *p);
        *p = (pull_req){.h = h,
                        .req = req,
                        .name = mt_xstrdup(name),
                        .max = (uint32_t) max,
                        .deadline_us = mt_mono_us() + (int64_t) wait_ms * 1000};
        pull_submit(p);
    } else if ((strcmp(rest, "/ack") == 0 || strcmp(rest, "/nack") == 0 ||
                strcmp(rest, "/extend") == 0) && cmd == EVHTTP_REQ_POST) {
        handle_lease_op(h, req, name, strcmp(rest, "/ack") == 0    ? MT_LEASE_ACK
                                      : strcmp(rest, "/nack") == 0 ? MT_LEASE_NACK
                                                                   : MT_LEASE_EXTEND);
    } else if (strcmp(rest, "/pull") == 0 || strcmp(rest, "/ack") == 0 ||
               strcmp(rest, "/nack") == 0 || strcmp(rest, "/extend") == 0) {
        method_not_allowed(req, "POST");
    } else if ((strcmp(rest, "/pause") == 0 || strcmp(rest, "/resume") == 0) &&
               cmd == EVHTTP_REQ_POST) {
        if (mt_subs_pause(h->subs, name, strcmp(rest, "/pause") == 0, dlq_answer, req)) {
            reply_error(req, 503, "shutting down", "the engine is stopping");
        }
    } else if (strcmp(rest, "/pause") == 0 || strcmp(rest, "/resume") == 0) {
        method_not_allowed(req, "POST");
    } else if (strcmp(rest, "/dlq") == 0) {
        method_not_allowed(req, "GET, DELETE");
    } else if (strcmp(rest, "/dlq/redrive") == 0) {
        method_not_allowed(req, "POST");
    } else {
        reply_error(req, 404, "not found", "no resource at '/subscriptions/%.64s%.64s'", name,
                    rest);
    }
}

static void lease_answer(mt_err rc, json_t *result, void *arg)
{
    struct evhttp_request *req = arg;
    if (rc) {
        reply_error(req, rc == MT_EFULL ? 507 : rc == MT_ECLOSED ? 503 : 500,
                    "lease operation failed", "%s",
                    mt_err_str(rc));
        return;
    }
    json_t *unknown = json_object_get(result, "unknown");
    if (json_array_size(unknown) > 0) {
        json_t *extra = json_object();
        json_object_set(extra, "unknown", unknown);
        json_object_set(extra, "count", json_object_get(result, "count"));
        reply_error_extra(req, 409, "unknown lease", extra,
                          "%zu lease token(s) were handed out again, already settled, or never "
                          "existed",
                          json_array_size(unknown));
        return;
    }
    reply_json(req, 200, json_incref(result));
}

static void handle_lease_op(mt_http *h, struct evhttp_request *req, const char *name,
                            mt_lease_op op)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    json_error_t e;
    json_t *body = len ? json_loadb((const char *) evbuffer_pullup(in, -1), len, 0, &e) : NULL;
    json_t *leases = json_object_get(body, "leases");
    const char *delay = json_string_value(json_object_get(body, "delay"));
    json_t *error = json_object_get(body, "error");
    uint64_t delay_ms = 0;
    size_t i;
    json_t *v;
    bool ok = json_is_array(leases) && json_array_size(leases) > 0 &&
              json_array_size(leases) <= 10000;
    json_array_foreach(leases, i, v) {
        ok &= json_is_string(v);
    }
    if (!ok) {
        reply_error(req, 400, "malformed body",
                    "expected {\"leases\": [\"token\", ...]} with 1 to 10000 tokens");
    } else if (delay && (op != MT_LEASE_NACK || mt_parse_duration(delay, &delay_ms) ||
                         delay_ms > NACK_DELAY_MAX_MS)) {
        reply_error(req, 400, "malformed body",
                    "'delay' is a duration from 0 to 24h, and only for nack");
    } else if (error && (op != MT_LEASE_NACK || !json_is_string(error))) {
        reply_error(req, 400, "malformed body", "'error' is a string, and only for nack");
    } else if (!mt_subs_is_pull(h->subs, name)) {
        reply_error(req, 409, "not a pull subscription", "subscription '%.64s' is not pull", name);
    } else if (mt_subs_lease_op(h->subs, name, op, leases, delay_ms, json_string_value(error),
                                lease_answer, req)) {
        reply_error(req, 503, "shutting down", "the engine is stopping");
    }
    json_decref(body);
}

static void handle_tables(mt_http *h, struct evhttp_request *req, const char *path,
                          struct evkeyvalq *q)
{
    const char *rest;
    char *table = path_segment(path, &rest);
    if (!table) {
        reply_error(req, 400, "invalid table", "the table name in the path is empty or malformed");
        return;
    }
    mt_txn *t;
    if (mt_store_read_begin(h->store, &t)) {
        free(table);
        reply_error(req, 500, "storage error", "cannot begin a read transaction");
        return;
    }
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        uint64_t limit;
        const char *prefix = evhttp_find_header(q, "prefix");
        if (query_u64(req, q, "limit", READ_LIMIT_DEFAULT, 1, READ_LIMIT_MAX, &limit)) {
            json_t *o;
            mt_err rc = mt_subs_table_scan(t, table, prefix ? prefix : "", limit, &o);
            if (rc == MT_EINVAL) {
                reply_error(req, 400, "invalid table", "table or prefix too long");
            } else if (rc) {
                reply_error(req, 500, "storage error", "%s", mt_err_str(rc));
            } else {
                reply_json(req, 200, o);
            }
        }
    } else {
        const char *rest2;
        char *key = path_segment(rest + 1, &rest2);
        mt_buf b;
        mt_buf_init(&b);
        mt_err rc = key && !*rest2 ? mt_subs_table_get(t, table, key, &b) : MT_EINVAL;
        if (rc == MT_ENOTFOUND) {
            reply_error(req, 404, "key not found", "no key '%.200s' in table '%.64s'", key, table);
        } else if (rc == MT_EINVAL) {
            reply_error(req, 400, "invalid key", "the path must be /tables/TABLE/KEY");
        } else if (rc) {
            reply_error(req, 500, "storage error", "%s", mt_err_str(rc));
        } else {
            reply(req, 200, "application/json", b.data, b.len);
        }
        mt_buf_free(&b);
        free(key);
    }
    mt_store_read_end(t);
    free(table);
}

/* ---- Server-Sent Events ---- */

static void sse_free(sse_client *c)
{
    mt_http *h = c->h;
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        h->sse = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    h->nsse--;
    if (h->fan_next == c) {
        h->fan_next = c->next;
    }
    event_free(c->heartbeat);
    event_free(c->drain);
    for (int i = 0; i < c->ntopics; i++) {
        free(c->topics[i]);
    }
    free(c);
}

/*
 * The client went away. evhttp has detached the unfinished request from the
 * connection and leaves it to us: ending it frees it.
 */
static void sse_on_close(struct evhttp_connection *evcon, void *arg)
{
    sse_client *c = arg;
    evhttp_send_reply_end(c->req);
    sse_free(c);
}

static size_t sse_backlog(sse_client *c)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static void sse_on_sent(struct evhttp_connection *evcon, void *arg)
{
    sse_client *c = arg;
    c->pumping = false;
    sse_pump(c);
}

static bool sse_matches(sse_client *c, const char *type)
{
    for (int i = 0; i < c->ntopics; i++) {
        bool m;
        if (mt_topic_match(c->topics[i], type, &m) == MT_OK && m) {
            return true;
        }
    }
    return false;
}

/* One event as an SSE frame: id (the sequence), event (the type), data (the CloudEvent). */
static void sse_format(const mt_event *ev, mt_buf *b)
{
    mt_buf_adds(b, "id: ");
    mt_buf_add_u64(b, ev->sequence);
    mt_buf_adds(b, "\nevent: ");
    mt_buf_adds(b, ev->attr[MT_ATTR_TYPE]);
    mt_buf_adds(b, "\ndata: ");
    /* Compact JSON has no raw newlines (they are escaped in strings). */
    mt_event_to_json(ev, b);
    mt_buf_adds(b, "\n\n");
}

typedef struct sse_page {
    sse_client *c;
    struct evbuffer *out;
    uint64_t last;
} sse_page;

static int sse_add_event(const mt_event *ev, void *arg)
{
    sse_page *p = arg;
    p->last = ev->sequence;
    if (!sse_matches(p->c, ev->attr[MT_ATTR_TYPE])) {
        return 0;
    }
    mt_buf b;
    mt_buf_init(&b);
    sse_format(ev, &b);
    evbuffer_add(p->out, b.data, b.len);
    mt_buf_free(&b);
    return 0;
}

static void frame_unref(sse_frame *f)
{
    if (--f->refs == 0) {
        free(f);
    }
}

static void frame_cleanup(const void *data, size_t len, void *arg)
{
    frame_unref(arg);
}

/* Empties the ring: it goes on from ring_last; streams further back read the log. */
static void ring_clear(mt_http *h)
{
    for (size_t i = 0; i < SSE_RING; i++) {
        if (h->ring[i]) {
            frame_unref(h->ring[i]);
            h->ring[i] = NULL;
        }
    }
    h->ring_bytes = 0;
    h->ring_first = h->ring_last;
}

/*
 * A new stream's patterns: one the ring did not filter by means the events
 * already in it may lack frames that stream wants, so the ring starts
 * afresh at the head (streams behind read the log, as for any older event).
 */
static void ring_add_topics(mt_http *h, sse_client *c)
{
    for (int i = 0; i < c->ntopics && !h->ring_all; i++) {
        int j = 0;
        while (j < h->ring_ntopics && strcmp(h->ring_topics[j], c->topics[i]) != 0) {
            j++;
        }
        if (j < h->ring_ntopics) {
            continue;
        }
        ring_clear(h);
        if (h->ring_ntopics == SSE_RING_TOPICS) {
            h->ring_all = true;
            break;
        }
        h->ring_topics = mt_xrealloc(h->ring_topics,
                                     (size_t) (h->ring_ntopics + 1) * sizeof *h->ring_topics);
        h->ring_topics[h->ring_ntopics++] = mt_xstrdup(c->topics[i]);
    }
}

/* Whether any stream may want events of 'type' (the ring formats only those). */
static bool ring_wants(mt_http *h, const char *type)
{
    if (h->ring_all) {
        return true;
    }
    for (int i = 0; i < h->ring_ntopics; i++) {
        bool m;
        if (mt_topic_match(h->ring_topics[i], type, &m) == MT_OK && m) {
            return true;
        }
    }
    return false;
}

/* A frame of 'len' bytes of text at 'text' (may be 0) for events of 'type'. */
static sse_frame *frame_new(uint64_t seq, const char *text, size_t len, const char *type)
{
    size_t tl = strlen(type);
    sse_frame *f = mt_xmalloc(sizeof *f + len + tl + 1);
    f->seq = seq;
    f->refs = 1;
    f->len = len;
    memcpy(f->mem, text, len);
    memcpy(f->mem + len, type, tl + 1);
    f->type = f->mem + len;
    return f;
}

/*
 * Makes 'f' the ring's frame for 'seq' (the next sequence); NULL leaves the
 * slot empty, so streams read that event from the log. Keeps the ring
 * within SSE_RING events and SSE_RING_BYTES.
 */
static void ring_put(mt_http *h, uint64_t seq, sse_frame *f)
{
    sse_frame **slot = &h->ring[seq & (SSE_RING - 1)];
    if (*slot) {
        h->ring_bytes -= (*slot)->len;
        frame_unref(*slot);
    }
    *slot = f;
    h->ring_bytes += f ? f->len : 0;
    h->ring_last = seq;
    if (h->ring_last - h->ring_first > SSE_RING) {
        h->ring_first = h->ring_last - SSE_RING;
    }
    while (h->ring_bytes > SSE_RING_BYTES && h->ring_first + 1 < h->ring_last) {
        sse_frame **old = &h->ring[(h->ring_first + 1) & (SSE_RING - 1)];
        if (*old) {
            h->ring_bytes -= (*old)->len;
            frame_unref(*old);
            *old = NULL;
        }
        h->ring_first++;
    }
}

static int ring_add_event(const mt_event *ev, void *arg)
{
    mt_http *h = arg;
    const char *type = ev->attr[MT_ATTR_TYPE];
    if (!ring_wants(h, type)) {
        /* No stream asked for it: an empty frame that every stream skips. */
        ring_put(h, ev->sequence, frame_new(ev->sequence, "", 0, type));
    } else if (ev->data_len > SSE_FRAME_MAX) {
        /* Not kept: streams read it from the log. */
        ring_put(h, ev->sequence, NULL);
    } else {
        mt_buf b;
        mt_buf_init(&b);
        sse_format(ev, &b);
        ring_put(h, ev->sequence, frame_new(ev->sequence, b.data, b.len, type));
        mt_buf_free(&b);
    }
    return 0;
}

/* Formats what was appended since the ring's last event (the newest SSE_RING at most). */
static void ring_fill(mt_http *h)
{
    mt_txn *t;
    if (!h->store || mt_store_read_begin(h->store, &t)) {
        return;
    }
    uint64_t head = 0;
    mt_log_head(t, &head);
    if (head > h->ring_last + SSE_RING) {
        /* Too far behind to matter: streams that far back read the log themselves. */
        ring_clear(h);
        h->ring_first = h->ring_last = head - SSE_RING;
    }
    if (head > h->ring_last) {
        mt_log_read(t, h->ring_last, head - h->ring_last, ring_add_event, h);
    }
    mt_store_read_end(t);
}

/*
 * Sends 'out' on the stream as one chunk. When nothing waits unsent on the
 * connection it is written here and now: going through the connection's
 * buffer costs two epoll_ctl calls (arm, then disarm, the write event) and
 * a loop turn per write, which with a thousand streams was as much kernel
 * time as the writes. What the socket does not take goes behind, through
 * the connection, in order; the next fan-out or chunk callback goes on.
 */
static void sse_send(sse_client *c, struct evbuffer *out)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->evcon);
    if (!bev || !c->req->chunked || evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
        c->pumping = true;
        evhttp_send_reply_chunk_with_cb(c->req, out, sse_on_sent, c);
        return;
    }
    char head[24];
    int hl = snprintf(head, sizeof head, "%zx\r\n", evbuffer_get_length(out));
    evbuffer_prepend(out, head, (size_t) hl);
    evbuffer_add(out, "\r\n", 2);
    evbuffer_write(out, bufferevent_getfd(bev)); /* errors show on the connection's next write */
    if (evbuffer_get_length(out) > 0) {
        /*
         * The socket is full: the rest goes through the connection, and the
         * stream waits until it is out (no chunk callback covers raw bytes).
         */
        bufferevent_write_buffer(bev, out);
        c->pumping = true;
        struct timeval tv = {0, SSE_DRAIN_US};
        evtimer_add(c->drain, &tv);
    }
}

/*
 * Sends what the client has not seen yet, a page at a time, while its
 * unsent output stays under SSE_BUFFER_MAX: a client that does not read is
 * paused (bounded memory), not fed without end. Recent events come from
 * the ring, shared by reference; a client further back reads the log.
 */
static void sse_pump(sse_client *c)
{
    mt_http *h = c->h;
    while (!c->pumping && h->store && sse_backlog(c) < SSE_BUFFER_MAX) {
        if (c->after >= h->ring_last) {
            return; /* caught up: the next fan-out brings what is new */
        }
        struct evbuffer *out = evbuffer_new();
        bool more;
        if (c->after >= h->ring_first && h->ring[(c->after + 1) & (SSE_RING - 1)]) {
            uint64_t upto = h->ring_last - c->after > SSE_PAGE ? c->after + SSE_PAGE : h->ring_last;
            uint64_t seq = c->after + 1;
            for (; seq <= upto; seq++) {
                sse_frame *f = h->ring[seq & (SSE_RING - 1)];
                if (!f) {
                    break; /* a large event the ring does not keep: from the log, next turn */
                }
                mt_assert(f->seq == seq);
                if (f->len > 0 && sse_matches(c, f->type)) {
                    f->refs++;
                    evbuffer_add_reference(out, f->mem, f->len, frame_cleanup, f);
                }
            }
            c->after = seq - 1;
            more = c->after < h->ring_last;
        } else {
            mt_txn *t;
            if (mt_store_read_begin(h->store, &t)) {
                evbuffer_free(out);
                return;
            }
            sse_page p = {c, out, c->after};
            int rc = mt_log_read(t, c->after, SSE_PAGE, sse_add_event, &p);
            mt_store_read_end(t);
            more = rc == 0 && p.last >= c->after + SSE_PAGE;
            c->after = p.last;
        }
        if (evbuffer_get_length(out) > 0) {
            sse_send(c, out);
        }
        evbuffer_free(out);
        if (!more) {
            return;
        }
    }
}

/*
 * New events: into the ring once, then to every stream, SSE_FANOUT_SLICE
 * streams at a time. The fan-out event has the loop's lowest priority, so
 * between two slices the loop takes requests and commits first: a fan-out
 * to a thousand streams (a write each) no longer holds publishers back
 * for its whole length.
 */
static void on_fanout(evutil_socket_t fd, short what, void *arg)
{
    mt_http *h = arg;
    h->fanout_due = false;
    if (!h->fan_next) {
        h->fanout_at = mt_mono_us();
        h->fan_next = h->sse;
    }
    ring_fill(h);
    for (int n = 0; h->fan_next && n < SSE_FANOUT_SLICE; n++) {
        sse_client *c = h->fan_next;
        h->fan_next = c->next;
        sse_pump(c);
    }
    if (h->fan_next) {
        h->fanout_due = true;
        event_active(h->fanout, EV_TIMEOUT, 0);
    } else if (h->fan_again) {
        /* Streams passed over before these events came get them in the next one. */
        h->fan_again = false;
        sse_appended(h);
    }
}

/*
 * Appends make one fan-out per loop turn, spaced by the number of streams:
 * each fan-out is a write per stream (15-20 µs each on loopback, most of it
 * the kernel's), so with a thousand streams events arriving within 15 ms
 * share their writes, while a few streams get each event at once. Events
 * that come while a fan-out is in progress start the next one as soon as it
 * ends, if its spacing has passed.
 */
static void sse_appended(mt_http *h)
{
    if (h->fan_next) {
        h->fan_again = true;
        return;
    }
    if (!h->sse || !h->fanout || event_pending(h->fanout, EV_TIMEOUT, NULL) || h->fanout_due) {
        return;
    }
    int64_t space = (int64_t) h->nsse * SSE_FANOUT_US_PER_STREAM;
    int64_t wait = h->fanout_at + (space < SSE_FANOUT_US_MAX ? space : SSE_FANOUT_US_MAX) -
                   mt_mono_us();
    if (wait <= 0) {
        h->fanout_due = true;
        event_active(h->fanout, EV_TIMEOUT, 0);
    } else {
        struct timeval tv = {0, (suseconds_t) wait};
        evtimer_add(h->fanout, &tv);
    }
}

/*
 * Every 15 s of a stream: a comment line keeps proxies from closing it. It
 * goes only when nothing waits unsent (a stream with output pending needs
 * none), through the chunk callback like any page.
 */
static void sse_on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    sse_client *c = arg;
    if (c->pumping || sse_backlog(c) > 0) {
        return;
    }
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, ": heartbeat\n\n");
    c->pumping = true;
    evhttp_send_reply_chunk_with_cb(c->req, b, sse_on_sent, c);
    evbuffer_free(b);
}

/* A directly written page left a remainder on the connection: go on once it is out. */
static void sse_on_drain(evutil_socket_t fd, short what, void *arg)
{
    sse_client *c = arg;
    if (!c->pumping) {
        return; /* a chunk callback came first */
    }
    if (sse_backlog(c) > 0) {
        struct timeval tv = {0, SSE_DRAIN_US};
        evtimer_add(c->drain, &tv);
        return;
    }
    c->pumping = false;
    sse_pump(c);
}

/* Frees a client that was never linked in (its request was answered with an error). */
static void sse_discard(sse_client *c)
{
    for (int i = 0; i < c->ntopics; i++) {
        free(c->topics[i]);
    }
    free(c);
}

static void handle_subscribe(mt_http *h, struct evhttp_request *req, struct evkeyvalq *q)
{
    if (h->draining) {
        reply_error(req, 503, "shutting down", "the engine is stopping");
        return;
    }
    sse_client *c = mt_xcalloc(1, sizeof *c);
    c->h = h;
    c->req = req;
    for (struct evkeyval *kv = q->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcmp(kv->key, "topic") != 0) {
            continue;
        }
        if (c->ntopics == SSE_MAX_TOPICS || mt_topic_validate_pattern(kv->value)) {
            reply_error(req, 400, "invalid query parameter",
                        c->ntopics == SSE_MAX_TOPICS
                            ? "at most 16 'topic' parameters"
                            : "'topic' must be a topic pattern ('*' one word, '#' zero or more), "
                              "got '%.100s'", kv->value);
            sse_discard(c);
            return;
        }
        c->topics[c->ntopics++] = mt_xstrdup(kv->value);
    }
    if (c->ntopics == 0) {
        reply_error(req, 400, "invalid query parameter",
                    "at least one 'topic' parameter is needed, e.g. topic=order.%%23");
        sse_discard(c);
        return;
    }
    /* Resume point: Last-Event-ID (a reconnecting EventSource), else after=, else the head. */
    const char *last = evhttp_find_header(evhttp_request_get_input_headers(req), "Last-Event-ID");
    uint64_t after;
    if (last) {
        if (mt_parse_u64(last, &after) || after == UINT64_MAX) {
            reply_error(req, 400, "invalid Last-Event-ID", "expected a sequence, got '%.64s'", last);
            sse_discard(c);
            return;
        }
    } else if (evhttp_find_header(q, "after")) {
        if (!query_u64(req, q, "after", 0, 0, UINT64_MAX - 1, &after)) {
            sse_discard(c);
            return;
        }
    } else {
        mt_txn *t;
        after = 0;
        if (mt_store_read_begin(h->store, &t) == MT_OK) {
            mt_log_head(t, &after);
            mt_store_read_end(t);
        }
    }
    c->after = after;
    c->evcon = evhttp_request_get_connection(req);
    c->next = h->sse;
    if (h->sse) {
        h->sse->prev = c;
    }
    h->sse = c;
    h->nsse++;
    evhttp_connection_set_closecb(c->evcon, sse_on_close, c);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "Content-Type", "text/event-stream");
    evhttp_add_header(oh, "Cache-Control", "no-cache");
    evhttp_send_reply_start(req, 200, "OK");
    c->heartbeat = event_new(evhttp_connection_get_base(c->evcon), -1, EV_PERSIST,
                             sse_on_heartbeat, c);
    c->drain = evtimer_new(evhttp_connection_get_base(c->evcon), sse_on_drain, c);
    struct timeval tv = {SSE_HEARTBEAT_S, 0};
    event_add(c->heartbeat, &tv);
    ring_add_topics(h, c);
    ring_fill(h); /* the ring is filled only while streams exist: bring it up to the head */
    sse_pump(c);
}

/*
 * The servers open on this process, so that a listener's error callback
 * (which libevent hands only the struct evhttp) finds its mt_http. Loop
 * thread only.
 */
static mt_http *open_servers;

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    mt_http *h = arg;
    if (h->sock) {
        evconnlistener_enable(evhttp_bound_socket_get_listener(h->sock));
    }
}

/*
 * accept() failed. Out of descriptors, the pending connection stays in the
 * queue and the listener would fail again at once, spinning: stop
 * accepting for a second instead (one warning a second, not a flood).
 */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
        return; /* the client gave up before we took it: nothing to do */
    }
    mt_http *h = open_servers;
    while (h && h->http != arg) {
        h = h->next_open;
    }
    mt_warn("http: cannot accept connections: %s; trying again in 1 s",
            evutil_socket_error_to_string(e));
    evconnlistener_disable(lev);
    if (h) {
        struct timeval tv = {1, 0};
        evtimer_add(h->accept_resume, &tv);
    }
}

/* Ends every stream (shutdown). */
static void sse_end_all(mt_http *h)
{
    while (h->sse) {
        sse_client *c = h->sse;
        evhttp_connection_set_closecb(c->evcon, NULL, NULL);
        evhttp_send_reply_end(c->req);
        sse_free(c);
    }
}

/* ---- routing ---- */

static void method_not_allowed(struct evhttp_request *req, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    reply_error(req, 405, "method not allowed", "this resource allows %s", allow);
}

static void route(struct evhttp_request *req, void *arg)
{
    mt_http *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
    if (!path) {
        reply_error(req, 400, "bad request", "the request target is not a valid URI");
        return;
    }
    if (!h->store) {
        reply_error(req, 503, "shutting down", "the engine is stopping");
        return;
    }
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *query = evhttp_uri_get_query(uri);
    if (query && evhttp_parse_query_str(query, &q)) {
        reply_error(req, 400, "bad request", "the query string is malformed");
        return;
    }
    if (query && strstr(query, "%00")) {
        /* Decoded, the value would end at it: prefix=a%00b would read as prefix=a. */
        evhttp_clear_headers(&q);
        reply_error(req, 400, "bad request", "the query string holds a NUL byte (%%00)");
        return;
    }
    if (strcmp(path, "/events") == 0) {
        if (cmd == EVHTTP_REQ_POST) {
            handle_publish(h, req);
        } else if (get) {
            handle_read_events(h, req, &q);
        } else {
            method_not_allowed(req, "GET, POST");
        }
    } else if (strncmp(path, "/streams/", 9) == 0 && path[9]) {
        if (get) {
            handle_read_stream(h, req, path + 9, &q);
        } else {
            method_not_allowed(req, "GET");
        }
    } else if (strcmp(path, "/subscriptions") == 0) {
        if (get) {
            handle_subscriptions(h, req, NULL);
        } else {
            method_not_allowed(req, "GET");
        }
    } else if (strncmp(path, "/subscriptions/", 15) == 0 && path[15]) {
        const char *rest;
        char *name = path_segment(path + 15, &rest);
        if (!name) {
            reply_error(req, 400, "invalid subscription", "the name in the path is malformed");
        } else if (*rest == '\0') {
            if (get) {
                handle_subscriptions(h, req, name);
            } else if (cmd == EVHTTP_REQ_PUT || cmd == EVHTTP_REQ_DELETE) {
                handle_sub_change(h, req, name, cmd == EVHTTP_REQ_PUT);
            } else {
                method_not_allowed(req, "GET, PUT, DELETE");
            }
        } else {
            handle_dlq(h, req, name, rest, &q);
        }
        free(name);
    } else if (strncmp(path, "/tables/", 8) == 0 && path[8]) {
        if (get) {
            handle_tables(h, req, path + 8, &q);
        } else {
            method_not_allowed(req, "GET");
        }
    } else if (strcmp(path, "/subscribe") == 0) {
        if (get) {
            handle_subscribe(h, req, &q);
        } else {
            method_not_allowed(req, "GET");
        }
    } else if (strcmp(path, "/healthz") == 0) {
        if (get) {
            handle_health(h, req);
        } else {
            method_not_allowed(req, "GET");
        }
    } else {
        reply_error(req, 404, "not found", "no resource at '%.200s'", path);
    }
    evhttp_clear_headers(&q);
}

/* ---- lifecycle ---- */

mt_err mt_http_open(mt_loop *loop, mt_store *store, const mt_http_opts *opts, mt_http **out)
{
    *out = NULL;
    mt_http *h = mt_xcalloc(1, sizeof *h);
    h->loop = loop;
    h->store = store;
    h->max_body = opts->max_body;
    h->http = evhttp_new(mt_loop_base(loop));
    if (!h->http) {
        free(h);
        return MT_EIO;
    }
    /*
     * evhttp refuses bodies over its limit with an HTML 413 of its own (no
     * hook in libevent 2.1), before reading them. Letting it read up to
     * twice max_body means a body somewhat too large gets our JSON 413,
     * while memory per request stays bounded.
     */
    uint64_t hard = opts->max_body * 2 > opts->max_body + 65536 ? opts->max_body * 2
                                                                 : opts->max_body + 65536;
    evhttp_set_max_body_size(h->http, (ev_ssize_t) hard);
    /* A body over that is read to its end and dropped before the 413: cut
     * off while sending, a client saw a broken pipe instead of the answer. */
    evhttp_set_flags(h->http, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_max_headers_size(h->http, 64 * 1024);
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
    evhttp_set_timeout(h->http, 120);
    evhttp_set_gencb(h->http, route, h);
    /* Resolved here first: evhttp's own failure to resolve leaves errno stale. */
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                    .ai_flags = EVUTIL_AI_PASSIVE}, *ai = NULL;
    int gai = evutil_getaddrinfo(opts->host, NULL, &hints, &ai);
    if (ai) {
        evutil_freeaddrinfo(ai);
    }
    if (gai != 0) {
        mt_error("http: cannot listen on %s:%u: cannot resolve '%s': %s", opts->host, opts->port,
                 opts->host, evutil_gai_strerror(gai));
        evhttp_free(h->http);
        free(h);
        return MT_EUNAVAIL;
    }
    h->sock = evhttp_bind_socket_with_handle(h->http, opts->host, opts->port);
    if (!h->sock) {
        mt_error("http: cannot listen on %s:%u: %s", opts->host, opts->port,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        evhttp_free(h->http);
        free(h);
        return MT_EUNAVAIL;
    }
    struct sockaddr_storage ss;
    ev_socklen_t sl = sizeof ss;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(h->sock);
    /*
     * Answers go out at once: with Nagle's algorithm the tail of an answer
     * larger than one write (libevent writes 16 KiB at a time) waited for
     * the client's delayed ACK, ~40 ms. Accepted sockets inherit it.
     */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(h->sock), on_accept_error);
    if (getsockname(fd, (struct sockaddr *) &ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            h->port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            h->port = ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
        }
    }
    h->accept_resume = evtimer_new(mt_loop_base(loop), on_accept_resume, h);
    h->next_open = open_servers;
    open_servers = h;
    /* The SSE ring starts at the head: older events are read from the log. */
    h->ring = mt_xcalloc(SSE_RING, sizeof *h->ring);
    h->fanout = event_new(mt_loop_base(loop), -1, 0, on_fanout, h);
    event_priority_set(h->fanout, MT_LOOP_PRIORITIES - 1);
    mt_txn *t;
    if (mt_store_read_begin(store, &t) == MT_OK) {
        mt_log_head(t, &h->ring_last);
        h->ring_first = h->ring_last;
        mt_store_read_end(t);
    }
    *out = h;
    return MT_OK;
}

void mt_http_appended(mt_http *h)
{
    mt_txn *t;
    uint64_t head = 0;
    sse_appended(h);
    wake_pulls(h);
    replies_check(h);
    if (!h->waiters || !h->store || mt_store_read_begin(h->store, &t)) {
        return;
    }
    mt_log_head(t, &head);
    mt_store_read_end(t);
    wake_waiters(h, head);
}

void mt_http_set_subs(mt_http *h, mt_subs *subs)
{
    h->subs = subs;
}

uint16_t mt_http_port(const mt_http *h)
{
    return h->port;
}

void mt_http_stop_accepting(mt_http *h)
{
    h->draining = true;
    evtimer_del(h->accept_resume);
    if (h->sock) {
        evhttp_del_accept_socket(h->http, h->sock);
        h->sock = NULL;
    }
    while (h->waiters) {
        waiter_answer(h->waiters);
    }
    while (h->replies) {
        reply_error(h->replies->req, 503, "shutting down",
                    "the engine is stopping before the reply arrived");
        reply_waiter_free(h->replies);
    }
    while (h->pulls) {
        reply_json(h->pulls->req, 200, json_array());
        pull_req_free(h->pulls);
    }
    sse_end_all(h);
}

void mt_http_detach_store(mt_http *h)
{
    mt_http_stop_accepting(h);
    h->store = NULL;
    h->subs = NULL;
}

void mt_http_close(mt_http *h)
{
    if (!h) {
        return;
    }
    while (h->waiters) {
        waiter_free(h->waiters);
    }
    evhttp_free(h->http);
    for (size_t i = 0; i < SSE_RING; i++) {
        if (h->ring[i]) {
            frame_unref(h->ring[i]);
        }
    }
    free(h->ring);
    for (int i = 0; i < h->ring_ntopics; i++) {
        free(h->ring_topics[i]);
    }
    free(h->ring_topics);
    event_free(h->fanout);
    event_free(h->accept_resume);
    for (mt_http **p = &open_servers; *p; p = &(*p)->next_open) {
        if (*p == h) {
            *p = h->next_open;
            break;
        }
    }

    free(h);
}

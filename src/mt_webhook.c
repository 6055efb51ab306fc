#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "mt_diag.h"
#include "mt_mem.h"
#include "mt_util.h"
#include "mt_webhook.h"

#define POLL_MS 200            /* how often idle slots look for redeliveries */
#define TIMEOUT_S 10           /* per request */

typedef struct hook hook;

typedef struct slot {
    hook *hk;
    struct evhttp_connection *conn;
    bool busy;
    char token[64];            /* the lease being delivered */
    uint32_t attempt;
    struct evhttp_request *req; /* the POST in flight, or NULL */
    struct event *deadline;    /* ends the POST before its lease would */
} slot;

struct hook {
    mt_webhooks *w;
    mt_sub_conf *conf;         /* owned copy */
    char *host;                /* owned */
    int port;
    char *path;                /* owned: path and query */
    unsigned char key[256];    /* decoded secret */
    int keylen;                /* 0 = unsigned */
    slot *slots;               /* owned, conf->webhook_concurrency */
    bool pulling;
    int64_t pulled_at_us;      /* when the pull in flight was asked for: its leases end after */
    bool again;                /* kicked while pulling: pull again after */
    bool gone;                 /* 410: stop delivering */
    bool retired;              /* its subscription changed or went: freed once idle */
    struct event *timer;
    struct event *due;         /* fires when the next queued message falls due */
    hook *next;
};

struct mt_webhooks {
    mt_loop *loop;
    mt_subs *subs;
    hook *hooks;               /* owned list */
    bool stopping;
};

static void hook_fill(hook *hk);
static void hook_reap(hook *hk);
static uint64_t deadline_ms(const mt_sub_conf *c);

/* ---- settling leases ---- */

static void settled(mt_err rc, json_t *result, void *arg)
{
    slot *sl = arg;
    sl->busy = false;
    if (sl->hk->retired) {
        hook_reap(sl->hk);
        return;
    }
    if (rc && rc != MT_ECLOSED) {
        mt_diag_emit(MT_DIAG_WARN, (const char *const[]){"subscription", sl->hk->conf->name, NULL},
                     "webhook '%s': settling a lease failed: %s", sl->hk->conf->name,
                     mt_err_str(rc));
    }
    hook_fill(sl->hk);
}

/* Settles the slot's lease; a nack's 'error' (or NULL) says why the attempt failed. */
static void settle_lease(slot *sl, mt_lease_op op, uint64_t delay_ms, const char *error)
{
    json_t *tokens = json_pack("[s]", sl->token);
    mt_err rc = mt_subs_lease_op(sl->hk->w->subs, sl->hk->conf->name, op, tokens, delay_ms,
                                 error, settled, sl);
    json_decref(tokens);
    if (rc) {
        /* The subscription is gone (or the engine stops): its lease expires on its own. */
        sl->busy = false;
        if (sl->hk->retired) {
            hook_reap(sl->hk);
        }
    }
}

typedef struct pause_ctx {
    mt_webhooks *w;
    char *name;                /* owned: the hook may be gone when the pause is recorded */
} pause_ctx;

static void paused(mt_err rc, uint64_t count, void *arg)
{
    pause_ctx *p = arg;
    if (rc) {
        mt_diag_emit(MT_DIAG_ERROR, (const char *const[]){"subscription", p->name, NULL},
                     "webhook '%s': cannot record the pause: %s", p->name, mt_err_str(rc));
    }
    /* From now on the subscription's own pause holds delivery; a resume restarts it. */
    for (hook *hk = p->w->hooks; hk; hk = hk->next) {
        if (!hk->retired && strcmp(hk->conf->name, p->name) == 0) {
            hk->gone = rc != MT_OK;
        }
    }
    free(p->name);
    free(p);
}

static uint64_t backoff_ms(const mt_sub_conf *c, uint32_t attempt)
{
    return (uint64_t) mt_sub_backoff_us(c, attempt) / 1000;
}

/*
 * Retry-After as delay-seconds or an HTTP date, in ms from now, at most an
 * hour (a date in the past is 0); false if absent or neither.
 */
static bool retry_after_ms(const char *ra, uint64_t *ms)
{
    uint64_t secs;
    if (!ra) {
        return false;
    }
    if (mt_parse_u64(ra, &secs) == MT_OK) {
        *ms = (secs > 3600 ? 3600 : secs) * 1000;
        return true;
    }
    struct tm tm = {0};
    const char *end = strptime(ra, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end) {
        return false;
    }
    int64_t at_us = (int64_t) timegm(&tm) * 1000000, now = mt_now_us();
    int64_t d = at_us > now ? (at_us - now) / 1000 : 0;
    *ms = (uint64_t) (d > 3600 * 1000 ? 3600 * 1000 : d);
    return true;
}

static void on_response(struct evhttp_request *req, void *arg)
{
    slot *sl = arg;
    hook *hk = sl->hk;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    sl->req = NULL;
    evtimer_del(sl->deadline);
    if (hk->w->stopping) {
        sl->busy = false;
        return;
    }
    /* A retired hook still settles what it sent: the lease belongs to the subscription. */
    if (status >= 200 && status < 300) {
        settle_lease(sl, MT_LEASE_ACK, 0, NULL);
        return;
    }
    char why[200];
    if (status == 0) {
        snprintf(why, sizeof why, "POST %s:%d%s: no answer (connection failed, closed or timed "
                 "out after %d s without data)", hk->host, hk->port, hk->path, TIMEOUT_S);
    } else {
        const char *line = evhttp_request_get_response_code_line(req);
        snprintf(why, sizeof why, "POST %s:%d%s: answered %d %s", hk->host, hk->port, hk->path,
                 status, line ? line : "");
    }
    uint64_t delay = backoff_ms(hk->conf, sl->attempt);
    if (status == 410) {
        /* The endpoint is gone for good: stop, keep the event for a resume. */
        hk->gone = true;
        mt_diag_emit(MT_DIAG_WARN, (const char *const[]){"subscription", hk->conf->name, NULL},
                     "webhook '%s': the endpoint answered 410 Gone; subscription paused",
                     hk->conf->name);
        if (!hk->retired) {
            /* A retired hook's 410 says nothing about the definition that replaced it. */
            pause_ctx *p = mt_xmalloc(sizeof *p);
            *p = (pause_ctx){hk->w, mt_xstrdup(hk->conf->name)};
            if (mt_subs_pause(hk->w->subs, hk->conf->name, true, paused, p)) {
                free(p->name);
                free(p);
            }
        }
        settle_lease(sl, MT_LEASE_NACK, 0, why);
        return;
    }
    const char *ra = req ? evhttp_find_header(evhttp_request_get_input_headers(req), "Retry-After")
                         : NULL;
    retry_after_ms(ra, &delay);
    settle_lease(sl, MT_LEASE_NACK, delay, why);
}

/*
 * The POST outlived most of its lease: end it before the lease expires,
 * or the event would be leased to another slot while this one is still
 * being delivered.
 */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    slot *sl = arg;
    hook *hk = sl->hk;
    if (!sl->req) {
        return;
    }
    evhttp_cancel_request(sl->req); /* on_response is not called; the connection is reset */
    sl->req = NULL;
    char why[200];
    snprintf(why, sizeof why, "POST %s:%d%s: no answer within %llu ms (nine tenths of the lease)",
             hk->host, hk->port, hk->path, (unsigned long long) deadline_ms(hk->conf));
    settle_lease(sl, MT_LEASE_NACK, backoff_ms(hk->conf, sl->attempt), why);
}

/* ---- sending ---- */

/* How long a POST may take: nine tenths of the lease, which it must not outlive. */
static uint64_t deadline_ms(const mt_sub_conf *c)
{
    return c->lease_ms - c->lease_ms / 10;
}

static void sign(hook *hk, const char *id, const char *ts, const char *body, size_t len,
                 char *out, size_t outlen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    mt_buf msg;
    mt_buf_init(&msg);
    mt_buf_addf(&msg, "%s.%s.", id, ts);
    mt_buf_add(&msg, body, len);
    HMAC(EVP_sha256(), hk->key, hk->keylen, (const unsigned char *) msg.data, msg.len, mac,
         &maclen);
    mt_buf_free(&msg);
    char b64[128];
    EVP_EncodeBlock((unsigned char *) b64, mac, (int) maclen);
    snprintf(out, outlen, "v1,%s", b64);
}

static void send_one(slot *sl, json_t *item, int64_t deadline_us)
{
    hook *hk = sl->hk;
    json_t *raw = json_object_get(item, "raw");
    snprintf(sl->token, sizeof sl->token, "%s", json_string_value(json_object_get(item, "lease")));
    sl->attempt = (uint32_t) json_integer_value(json_object_get(item, "attempt"));
    char id[96], ts[24];
    snprintf(id, sizeof id, "%s-%lld", hk->conf->name,
             (long long) json_integer_value(json_object_get(item, "sequence")));
    snprintf(ts, sizeof ts, "%lld", (long long) (mt_now_us() / 1000000));
    struct evhttp_request *req = evhttp_request_new(on_response, sl);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char hostport[300];
    snprintf(hostport, sizeof hostport, "%s:%d", hk->host, hk->port);
    evhttp_add_header(h, "Host", hostport);
    evhttp_add_header(h, "Content-Type", "application/cloudevents+json");
    evhttp_add_header(h, "webhook-id", id);
    evhttp_add_header(h, "webhook-timestamp", ts);
    if (hk->keylen) {
        char sig[160];
        sign(hk, id, ts, json_string_value(raw), json_string_length(raw), sig, sizeof sig);
        evhttp_add_header(h, "webhook-signature", sig);
    }
    evbuffer_add(evhttp_request_get_output_buffer(req), json_string_value(raw),
                 json_string_length(raw));
    sl->busy = true;
    int64_t left_us = deadline_us - mt_now_us();
    if (left_us <= 0) {
        evhttp_request_free(req);
        char why[160];
        snprintf(why, sizeof why,
                 "nine tenths of the lease (%llu ms) passed before the POST could start "
                 "(the engine is overloaded)",
                 (unsigned long long) deadline_ms(hk->conf));
        settle_lease(sl, MT_LEASE_NACK, backoff_ms(hk->conf, sl->attempt), why);
        return;
    }
    if (evhttp_make_request(sl->conn, req, EVHTTP_REQ_POST, hk->path) != 0) {
        settle_lease(sl, MT_LEASE_NACK, backoff_ms(hk->conf, sl->attempt),
                     "cannot send the POST (out of memory?)");
        return;
    }
    sl->req = req;
    struct timeval tv = {(time_t) (left_us / 1000000), (suseconds_t) (left_us % 1000000)};
    evtimer_add(sl->deadline, &tv);
}

static void on_pulled(mt_err rc, json_t *result, void *arg)
{
    hook *hk = arg;
    json_t *items = json_object_get(result, "items");
    hk->pulling = false;
    if (hk->retired) {
        /* Its leases come back when they expire. */
        hook_reap(hk);
        return;
    }
    if (rc || hk->w->stopping) {
        return;
    }
    /*
     * The leases were granted after the pull was asked for, so they last at
     * least until then + the lease; a POST ends a tenth of the lease before
     * that, however long the pull took to come back, and its nack reaches
     * the writer before the webhook's next pull could find the lease expired.
     */
    int64_t deadline_us = hk->pulled_at_us + (int64_t) deadline_ms(hk->conf) * 1000;
    size_t i = 0;
    for (int s = 0; s < hk->conf->webhook_concurrency && i < json_array_size(items); s++) {
        if (!hk->slots[s].busy) {
            send_one(&hk->slots[s], json_array_get(items, i++), deadline_us);
        }
    }
    int64_t due = json_integer_value(json_object_get(result, "next_due_us"));
    if (due > 0 && due - mt_now_us() < POLL_MS * 1000) {
        /* An embargo, a retry or a lease falls due before the next poll: look then. */
        int64_t wait = due - mt_now_us() > 0 ? due - mt_now_us() : 0;
        struct timeval tv = {(time_t) (wait / 1000000), (suseconds_t) (wait % 1000000)};
        evtimer_add(hk->due, &tv);
    }
    if (hk->again) {
        hk->again = false;
        hook_fill(hk);
    }
}

/* Leases as many events as there are free slots. */
static void hook_fill(hook *hk)
{
    if (hk->pulling) {
        hk->again = true;
        return;
    }
    if (hk->gone || hk->retired || hk->w->stopping) {
        return;
    }
    int free_slots = 0;
    for (int s = 0; s < hk->conf->webhook_concurrency; s++) {
        free_slots += !hk->slots[s].busy;
    }
    hk->pulled_at_us = mt_now_us();
    if (free_slots && mt_subs_pull(hk->w->subs, hk->conf->name, (uint32_t) free_slots, on_pulled,
                                   hk) == MT_OK) {
        hk->pulling = true;
    }
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    hook_fill(arg);
}

/* ---- lifecycle ---- */

static void hook_free(hook *hk)
{
    if (hk->timer) {
        event_free(hk->timer);
    }
    if (hk->due) {
        event_free(hk->due);
    }
    for (int s = 0; hk->slots && s < hk->conf->webhook_concurrency; s++) {
        if (hk->slots[s].conn) {
            evhttp_connection_free(hk->slots[s].conn);
        }
        if (hk->slots[s].deadline) {
            event_free(hk->slots[s].deadline);
        }
    }
    free(hk->slots);
    free(hk->host);
    free(hk->path);
    mt_sub_conf_free(hk->conf);
    free(hk);
}

/* Frees a retired hook once nothing of it is in flight. */
static void hook_reap(hook *hk)
{
    if (hk->pulling) {
        return;
    }
    for (int s = 0; s < hk->conf->webhook_concurrency; s++) {
        if (hk->slots[s].busy) {
            return;
        }
    }
    for (hook **p = &hk->w->hooks; *p; p = &(*p)->next) {
        if (*p == hk) {
            *p = hk->next;
            break;
        }
    }
    hook_free(hk);
}

/* 'url' parsed, or NULL with why in err: http, a host, a port from 1 if given. */
static struct evhttp_uri *parse_url(const char *url, char *err, size_t errlen)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    if (!u) {
        snprintf(err, errlen, "cannot parse '%.100s' as a URL", url);
        return NULL;
    }
    const char *scheme = evhttp_uri_get_scheme(u), *host = evhttp_uri_get_host(u);
    if (!scheme || strcmp(scheme, "http") != 0) {
        snprintf(err, errlen, "'%.100s' is not an http:// URL", url);
    } else if (!host || !*host) {
        snprintf(err, errlen, "'%.100s' names no host", url);
    } else if (evhttp_uri_get_port(u) == 0) {
        snprintf(err, errlen, "'%.100s' names port 0", url);
    } else {
        return u;
    }
    evhttp_uri_free(u);
    return NULL;
}

mt_err mt_webhook_check_url(const char *url, char *err, size_t errlen)
{
    struct evhttp_uri *u = parse_url(url, err, errlen);
    if (!u) {
        return MT_EINVAL;
    }
    evhttp_uri_free(u);
    return MT_OK;
}

int mt_webhook_secret_key(const char *secret, unsigned char *key, size_t cap)
{
    if (strncmp(secret, "whsec_", 6) != 0) {
        return -1;
    }
    const char *b64 = secret + 6;
    size_t n = strlen(b64);
    if (n == 0 || n % 4 || n / 4 * 3 > cap) {
        return -1;
    }
    int k = EVP_DecodeBlock(key, (const unsigned char *) b64, (int) n);
    while (k > 0 && n > 0 && b64[n - 1] == '=') {
        n--;
        k--;
    }
    return k > 0 ? k : -1;
}

static mt_err hook_new(mt_webhooks *w, const mt_sub_conf *c, char *err, size_t errlen)
{
    hook *hk = mt_xcalloc(1, sizeof *hk);
    hk->w = w;
    hk->conf = mt_sub_conf_copy(c);
    c = hk->conf;
    char why[160];
    struct evhttp_uri *u = parse_url(c->webhook_url, why, sizeof why);
    if (!u) {
        snprintf(err, errlen, "webhook '%s': %s", c->name, why);
        hook_free(hk);
        return MT_ECONFIG;
    }
    hk->host = mt_xstrdup(evhttp_uri_get_host(u));
    hk->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
    const char *path = evhttp_uri_get_path(u);
    const char *query = evhttp_uri_get_query(u);
    hk->path = mt_xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "",
                            query ? query : "");
    evhttp_uri_free(u);
    if (c->webhook_secret) {
        int k = mt_webhook_secret_key(c->webhook_secret, hk->key, sizeof hk->key);
        if (k < 0) {
            snprintf(err, errlen, "webhook '%s': the secret is not whsec_<base64>", c->name);
            hook_free(hk);
            return MT_ECONFIG;
        }
        hk->keylen = k;
    }
    struct event_base *base = mt_loop_base(w->loop);
    hk->slots = mt_xcalloc((size_t) c->webhook_concurrency, sizeof *hk->slots);
    for (int s = 0; s < c->webhook_concurrency; s++) {
        hk->slots[s].hk = hk;
        hk->slots[s].conn = evhttp_connection_base_new(base, NULL, hk->host, (uint16_t) hk->port);
        evhttp_connection_set_timeout(hk->slots[s].conn, TIMEOUT_S);
        hk->slots[s].deadline = evtimer_new(base, on_deadline, &hk->slots[s]);
    }
    hk->timer = event_new(base, -1, EV_PERSIST, on_poll, hk);
    hk->due = evtimer_new(base, on_poll, hk);
    struct timeval tv = {0, POLL_MS * 1000};
    event_add(hk->timer, &tv);
    hk->next = w->hooks;
    w->hooks = hk;
    return MT_OK;
}

typedef struct open_ctx {
    mt_webhooks *w;
    mt_err rc;
    char *err;
    size_t errlen;
} open_ctx;

static void open_one(const mt_sub_conf *c, void *arg)
{
    open_ctx *o = arg;
    if (c->webhook_url && o->rc == MT_OK) {
        o->rc = hook_new(o->w, c, o->err, o->errlen);
    }
}

mt_err mt_webhooks_open(mt_loop *loop, mt_subs *subs, mt_webhooks **out, char *err, size_t errlen)
{
    *out = NULL;
    mt_webhooks *w = mt_xcalloc(1, sizeof *w);
    w->loop = loop;
    w->subs = subs;
    open_ctx o = {w, MT_OK, err, errlen};
    mt_subs_each(subs, open_one, &o);
    if (o.rc) {
        mt_webhooks_close(w);
        return o.rc;
    }
    *out = w;
    mt_webhooks_kick(w);
    return MT_OK;
}

void mt_webhooks_update(mt_webhooks *w, const char *name, const mt_sub_conf *conf)
{
    for (hook *hk = w->hooks; hk; hk = hk->next) {
        if (!hk->retired && strcmp(hk->conf->name, name) == 0) {
            hk->retired = true;
            event_del(hk->timer);
            event_del(hk->due);
        }
    }
    for (hook *hk = w->hooks, *next; hk; hk = next) {
        next = hk->next;
        if (hk->retired) {
            hook_reap(hk);
        }
    }
    if (conf && conf->webhook_url) {
        char err[512];
        if (hook_new(w, conf, err, sizeof err)) {
            mt_diag_emit(MT_DIAG_ERROR, (const char *const[]){"subscription", name, NULL},
                         "%s; nothing is delivered", err);
        } else {
            hook_fill(w->hooks);
        }
    }
}

void mt_webhooks_kick(mt_webhooks *w)
{
    for (hook *hk = w ? w->hooks : NULL; hk; hk = hk->next) {
        hook_fill(hk);
    }
}

void mt_webhooks_stop(mt_webhooks *w)
{
    if (w) {
        w->stopping = true;
    }
}

void mt_webhooks_close(mt_webhooks *w)
{
    if (!w) {
        return;
    }
    while (w->hooks) {
        hook *hk = w->hooks;
        w->hooks = hk->next;
        hook_free(hk);
    }
    free(w);
}

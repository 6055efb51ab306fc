/*
 * mt_delivery.c - benchmark of delivery to external subscribers: Server-Sent
 * Events fan-out, pull consumers, webhooks and scheduled (deliverafter)
 * delivery. bench/delivery.sh starts the engine and runs these in turn.
 *
 *   mt_delivery header
 *       Prints the column header of the result rows.
 *   mt_delivery sse --url BASE --clients C --rate R --seconds S [--warmup S]
 *       C clients on `GET /subscribe?topic=fan.%23` (one connection each,
 *       live from the head) while a publisher appends R events/s of type
 *       fan.tick, open loop, on up to PUB_CONNS connections (from a thread
 *       and event base of its own, so reading the streams does not hold its
 *       sends back). Each event's
 *       data carries the CLOCK_REALTIME nanoseconds at which it was sent
 *       ("pubns"); a client compares it with the clock when it parses the
 *       event: end-to-end latency, durable commit included. Events sent in
 *       the warm-up are not counted. After the measured seconds every client
 *       must get every event published, each once and in order, or the
 *       missing ones are errors. A second row gives the publisher's side.
 *   mt_delivery pull --url BASE --sub NAME --consumers K --events N [--max M]
 *       Publishes N events of type NAME.job, creates the pull subscription
 *       NAME over HTTP starting just before them, then K consumers loop
 *       `POST .../pull?max=M&wait=1s` and `POST .../ack` with the batch's
 *       lease tokens until all N are acknowledged, each once. One row for the
 *       pull calls, one for the ack calls (pulls that came back empty after
 *       waiting are not sampled). The subscription is deleted at the end.
 *   mt_delivery webhook --url BASE --sub NAME --concurrency C --events N
 *       Publishes N events of type NAME.sent, listens on a free loopback port
 *       (an evhttp server answering 204 to every POST; signatures are not
 *       checked), creates the webhook subscription NAME (concurrency C)
 *       starting just before the events, and measures until all N arrived,
 *       each once, and the engine counts them as handled.
 *   mt_delivery sched --url BASE --events N --handler PATH
 *       Creates three subscriptions of sched.#: schedpull (pull), schedhook
 *       (webhook to this tool) and schedlua (the Lua handler PATH, which
 *       re-emits each event as fired.due with the same data), opens an SSE
 *       stream on fired.#, then publishes N events of type sched.due, each on
 *       its own subject, with deliverafter spread evenly from 1 s to 5 s
 *       ahead (RFC 3339, microseconds) and the same instant in data ("due",
 *       ns). Three receivers run at once: a pull consumer (max=100,
 *       wait=1s), the webhook receiver, and the SSE client. Lateness =
 *       receipt time - deliverafter; an event received before its time, or
 *       not at all, is an error.
 *   mt_delivery live --url BASE --handler PATH [--subs N] [--workers W] --rate R --seconds S
 *                    [--warmup S] [--conns C] [--every K] [--drain S] [--no-stream]
 *       End-to-end latency of Lua handlers under live publishing (bench/live.sh).
 *       Opens one SSE stream on `receipt.#`, creates N subscriptions
 *       NAME-0 .. NAME-(N-1) of live.# with the handler PATH (and W workers)
 *       starting at the log's end, then publishes R events/s of type
 *       live.tick open loop: every millisecond the events due go as one
 *       application/cloudevents-batch+json request on a free connection of C
 *       (default 4; while all are busy, events wait and go together in the
 *       next request), subjects spread over 1000 values (--subjects N), ids
 *       the run's prefix and a counter (--random-ids: in UUID form, in no
 *       order, as most publishers make them). Each event's data
 *       holds its number "k" and its request's CLOCK_REALTIME send time
 *       "pubns"; every K-th (default 100) also "probe": true. The handler
 *       (bench/handlers/probe_*.lua) emits a receipt {k, pubns, appended}
 *       for each probe in the transaction that commits its effects;
 *       end-to-end = receipt parsed - pubns, over the probes sent in the
 *       measured span. A line on stderr splits it in three stages by the
 *       engine's recordedtime of the event ("appended": when its append ran
 *       on the writer) and of the receipt (when the handler ran): publish ->
 *       append, append -> handler, handler -> received (the receipt's
 *       commit, sync and SSE hop).
 *       After it, each subscription's lag is read (GET /subscriptions), and
 *       every accepted probe's receipt must arrive from every subscription,
 *       once, within --drain seconds (default 10). A run whose subscriptions
 *       are still behind then is a result, not an error: receipts not yet
 *       come count at the cutoff, as lower bounds ('>' before a percentile).
 *       One that caught up and still misses receipts is an error. With
 *       --subs 0 only publishing is measured (--no-stream: without the
 *       stream too). The subscriptions are deleted at the end.
 *   mt_delivery live-header
 *       Prints the column header of the live rows: offered and published
 *       events/s, probes sent in the span (per subscription), receipts of
 *       them received, end-to-end p50/p99/max, the largest lag at the end of
 *       the span, whether the subscriptions kept up (the offered rate went
 *       out, that lag was at most 100 ms of events, every receipt came),
 *       publish request p50/p99 (ms), CPU, errors, and the CPU of each engine
 *       thread over the span.
 *
 * Common options: --engine-pid PID (to report the engine's CPU use over the
 * measured span, from /proc), --name NAME (the row's name).
 *
 * Each measuring command prints result rows (see header): latencies in ms,
 * nearest rank over the sorted samples; cpu columns are percent of one core
 * over the measured span (200% = both cores of a 2-core machine). Exit
 * status 0 only if the run had no error.
 *
 * This is a tool, not part of the engine: one thread, one libevent base for
 * every connection (clients, publisher, receiver). It raises its own
 * RLIMIT_NOFILE soft limit to the hard limit.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#define EVENT_SIZE 300            /* bytes of one published JSON event */
#define SUBJECTS 1000
#define MAX_CLIENTS 20000
#define CONNECTING_MAX 64         /* SSE connections being set up at once */
#define PUB_CONNS 32              /* publisher connections: enough that a slow answer
                                     does not lower the offered rate */
#define MAX_CONSUMERS 256
#define MAX_ERRORS_SHOWN 5
#define TIMEOUT_S 60              /* per HTTP request / idle stream */
#define TICK_MS 1
#define DRAIN_S 60                /* after the measured span, to get the rest */

/* ---- helpers ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mt_delivery: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static _Atomic uint64_t errors; /* the sse publisher thread counts its own */

/* Counts an error; shows the first few. */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    if (++errors > MAX_ERRORS_SHOWN) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fputs("mt_delivery: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Wall-clock nanoseconds: what publish times, deliverafter and receipts share. */
static int64_t rt_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        die("--%s: '%s' is not a number in [%" PRIu64 ", %" PRIu64 "]", opt, s, min, max);
    }
    return v;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        die("out of memory");
    }
    return p;
}

/* A growable array of signed samples in nanoseconds (lateness can be < 0). */
typedef struct samples {
    int64_t *v;
    size_t n, cap;
} samples;

static void samples_add(samples *s, int64_t ns)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = ns;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return x < y ? -1 : x > y;
}

/* Nearest rank on the sorted samples: the smallest value >= p% of them. */
static double pct_ms(const samples *s, double p)
{
    size_t rank = (size_t) ((p / 100.0) * (double) s->n + 0.999999);
    if (rank < 1) {
        rank = 1;
    }
    if (rank > s->n) {
        rank = s->n;
    }
    return (double) s->v[rank - 1] / 1e6;
}

/* A set of sequence numbers: counts each one once, reports the second time. */
typedef struct seqset {
    uint8_t *seen;
    size_t cap;
    uint64_t distinct;
} seqset;

static bool seqset_add(seqset *s, uint64_t seq)
{
    if (seq >= s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap <= seq) {
            cap *= 2;
        }
        s->seen = xrealloc(s->seen, cap);
        memset(s->seen + s->cap, 0, cap - s->cap);
        s->cap = cap;
    }
    if (s->seen[seq]) {
        return false;
    }
    s->seen[seq] = 1;
    s->distinct++;
    return true;
}

/* CPU seconds (user + system) of a process, from /proc; -1 if unknown. */
static double proc_cpu_s(long pid)
{
    if (pid <= 0) {
        return -1;
    }
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name, which may hold spaces: state is field 3,
     * utime 14, stime 15. */
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                     &st) != 2) {
        return -1;
    }
    return (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double) ru.ru_utime.tv_sec + (double) ru.ru_utime.tv_usec / 1e6 +
           (double) ru.ru_stime.tv_sec + (double) ru.ru_stime.tv_usec / 1e6;
}

/* CPU use of the engine and of this tool over a span. */
typedef struct cpu_span {
    long pid;
    double engine0, self0;
    int64_t t0;
    double engine_pct, self_pct; /* -1 = unknown */
} cpu_span;

static void cpu_begin(cpu_span *c)
{
    c->engine0 = proc_cpu_s(c->pid);
    c->self0 = self_cpu_s();
    c->t0 = rt_ns();
}

static void cpu_end(cpu_span *c)
{
    double secs = (double) (rt_ns() - c->t0) / 1e9;
    double e = proc_cpu_s(c->pid);
    c->engine_pct = c->engine0 >= 0 && e >= 0 && secs > 0 ? 100 * (e - c->engine0) / secs : -1;
    c->self_pct = secs > 0 ? 100 * (self_cpu_s() - c->self0) / secs : -1;
}

static void print_header(void)
{
    printf("%-17s %5s %7s %10s %6s %10s %-5s %9s %9s %9s %5s %5s %6s\n", "case", "conns",
           "events", "deliveries", "secs", "deliv/s", "lat", "p50_ms", "p99_ms", "max_ms",
           "eng%", "tool%", "errors");
}

/*
 * One result row. 'rate' < 0 prints '-' (not a throughput case), 'lat' NULL
 * prints '-' for the latencies; 'cpu' NULL prints '-' for the cpu columns.
 */
static void print_row(const char *name, unsigned conns, uint64_t events, uint64_t deliveries,
                      double secs, double rate, const char *latkind, samples *lat,
                      const cpu_span *cpu, uint64_t errs)
{
    char r[32] = "-", p50[32] = "-", p99[32] = "-", mx[32] = "-", ec[16] = "-", tc[16] = "-";
    if (rate >= 0) {
        snprintf(r, sizeof r, "%.0f", rate);
    }
    if (lat && lat->n) {
        qsort(lat->v, lat->n, sizeof *lat->v, cmp_i64);
        snprintf(p50, sizeof p50, "%.3f", pct_ms(lat, 50));
        snprintf(p99, sizeof p99, "%.3f", pct_ms(lat, 99));
        snprintf(mx, sizeof mx, "%.3f", (double) lat->v[lat->n - 1] / 1e6);
    }
    if (cpu && cpu->engine_pct >= 0) {
        snprintf(ec, sizeof ec, "%.0f", cpu->engine_pct);
    }
    if (cpu && cpu->self_pct >= 0) {
        snprintf(tc, sizeof tc, "%.0f", cpu->self_pct);
    }
    printf("%-17s %5u %7" PRIu64 " %10" PRIu64 " %6.2f %10s %-5s %9s %9s %9s %5s %5s %6" PRIu64
           "\n",
           name, conns, events, deliveries, secs, r, latkind ? latkind : "-", p50, p99, mx, ec, tc,
           errs);
    fflush(stdout);
}

static void errors_banner(const char *name)
{
    if (errors) {
        fprintf(stderr,
                "\n!!!!!!!! mt_delivery %s: %" PRIu64 " ERRORS - see the messages above "
                "!!!!!!!!\n\n",
                name, errors);
    }
}

/* Raises the open-file soft limit to the hard limit; dies if that is under 'need'. */
static void raise_nofile(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) {
        die("getrlimit: %s", strerror(errno));
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl)) {
            die("setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long) rl.rlim_max,
                strerror(errno));
        }
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        die("%llu file descriptors needed, the hard limit is %llu (raise it: ulimit -Hn)",
            (unsigned long long) need, (unsigned long long) rl.rlim_cur);
    }
}

/* ---- the event loop and the engine's address ---- */

static struct event_base *base;
static char *eng_host;
static int eng_port;
static struct event *tick;       /* keeps EVLOOP_ONCE from sleeping long */
static void (*on_tick)(void);    /* per-command work on every tick, or NULL */
static long engine_pid;
static const char *row_name;

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    (void) arg;
    if (on_tick) {
        on_tick();
    }
}

static void setup(const char *url)
{
    struct evhttp_uri *u = url ? evhttp_uri_parse(url) : NULL;
    if (!u || !evhttp_uri_get_host(u) || !evhttp_uri_get_scheme(u) ||
        strcmp(evhttp_uri_get_scheme(u), "http") != 0) {
        die("--url: '%s' is not an http:// URL", url ? url : "(none)");
    }
    eng_host = strdup(evhttp_uri_get_host(u));
    eng_port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
    evhttp_uri_free(u);
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (!base) {
        die("event_base_new failed");
    }
    tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(tick, &tv);
}

/* Runs the loop until *done or 'timeout_ms' passed; returns *done. */
static bool run_until(const bool *done, int64_t timeout_ms)
{
    int64_t deadline = rt_ns() + timeout_ms * 1000000;
    while (!*done && rt_ns() < deadline) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    return *done;
}

static struct evhttp_connection *connect_engine_on(struct event_base *b)
{
    struct evhttp_connection *c =
        evhttp_connection_base_new(b, NULL, eng_host, (ev_uint16_t) eng_port);
    if (!c) {
        die("evhttp_connection_base_new failed");
    }
    evhttp_connection_set_timeout(c, TIMEOUT_S);
    return c;
}

static struct evhttp_connection *connect_engine(void)
{
    return connect_engine_on(base);
}

static struct evhttp_request *new_request(void (*cb)(struct evhttp_request *, void *), void *arg,
                                          const char *ctype)
{
    struct evhttp_request *req = evhttp_request_new(cb, arg);
    if (!req) {
        die("evhttp_request_new failed");
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", eng_host);
    if (ctype) {
        evhttp_add_header(h, "Content-Type", ctype);
    }
    return req;
}

static void make_request(struct evhttp_connection *c, struct evhttp_request *req,
                         enum evhttp_cmd_type m, const char *path)
{
    if (evhttp_make_request(c, req, m, path)) {
        /* libevent has freed the request. */
        die("evhttp_make_request %s failed", path);
    }
}

/* The body of an answer as a NUL-terminated string (owned by the caller). */
static char *body_of(struct evhttp_request *req)
{
    struct evbuffer *in = req ? evhttp_request_get_input_buffer(req) : NULL;
    size_t n = in ? evbuffer_get_length(in) : 0;
    char *s = xrealloc(NULL, n + 1);
    if (n) {
        evbuffer_copyout(in, s, n);
    }
    s[n] = '\0';
    return s;
}

/* ---- one control request, run to its end ---- */

typedef struct answer {
    bool done;
    int code;   /* 0: no answer (connection failed or timed out) */
    char *body; /* owned */
} answer;

static void on_call(struct evhttp_request *req, void *arg)
{
    answer *a = arg;
    a->done = true;
    a->code = req ? evhttp_request_get_response_code(req) : 0;
    a->body = body_of(req);
}

/* Makes one request and waits for its answer; sets a->code and a->body. */
static void call(answer *a, enum evhttp_cmd_type m, const char *path, const char *body)
{
    static struct evhttp_connection *ctl;
    if (!ctl) {
        ctl = connect_engine();
    }
    *a = (answer){0};
    struct evhttp_request *req = new_request(on_call, a, body ? "application/json" : NULL);
    if (body) {
        evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    }
    make_request(ctl, req, m, path);
    if (!run_until(&a->done, (TIMEOUT_S + 5) * 1000)) {
        die("%s: no answer", path);
    }
}

/* A subscription's "handled" count, from GET /subscriptions/NAME. */
static uint64_t handled_of(const char *sub)
{
    char path[256];
    snprintf(path, sizeof path, "/subscriptions/%s", sub);
    answer a;
    call(&a, EVHTTP_REQ_GET, path, NULL);
    json_t *o = a.code == 200 ? json_loads(a.body, 0, NULL) : NULL;
    if (!o) {
        die("GET %s: answer %d: %s", path, a.code, a.body);
    }
    uint64_t n = (uint64_t) json_integer_value(json_object_get(o, "handled"));
    json_decref(o);
    free(a.body);
    return n;
}

/* ---- publishing ---- */

static char run_id[40];

static void init_run_id(void)
{
    /* Ids unique across runs, so reruns against one store never hit dedupe. */
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    snprintf(run_id, sizeof run_id, "d%lx%lx-%x", (unsigned long) rt.tv_sec,
             (unsigned long) rt.tv_nsec, (unsigned) getpid());
}

/*
 * Appends one structured CloudEvent of about EVENT_SIZE bytes to 'out':
 * type 'type', number 'k' (in its id), subject s-'subject', optional
 * deliverafter 'after', and data {<fields>,"pad":"xx.."}.
 */
static bool random_ids; /* ids in UUID form, in no order (live --random-ids) */

/* A mixer of 64 bits (splitmix64's finalizer): distinct inputs, distinct outputs. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xBF58476D1CE4E5B9);
    x ^= x >> 27;
    x *= UINT64_C(0x94D049BB133111EB);
    return x ^ (x >> 31);
}

static void add_event_on(struct evbuffer *out, const char *type, uint64_t k, uint64_t subject,
                         const char *after, const char *fields)
{
    char ev[EVENT_SIZE + 256];
    char da[96] = "";
    if (after) {
        snprintf(da, sizeof da, "\"deliverafter\":\"%s\",", after);
    }
    char id[96];
    if (random_ids) {
        /* Unique within the run (mix64 is a bijection), the run's prefix after it. */
        uint64_t a = mix64(k), b = mix64(a ^ k);
        snprintf(id, sizeof id, "%08x-%04x-4%03x-%04x-%012" PRIx64 "-%s", (unsigned) (a >> 32),
                 (unsigned) (a >> 16) & 0xffff, (unsigned) a & 0xfff,
                 (unsigned) (b >> 48) & 0xffff, b & UINT64_C(0xffffffffffff), run_id);
    } else {
        snprintf(id, sizeof id, "%s-%" PRIu64, run_id, k);
    }
    int len = snprintf(ev, sizeof ev,
                       "{\"specversion\":\"1.0\",\"id\":\"%s\","
                       "\"source\":\"/bench/mt_delivery\",\"type\":\"%s\","
                       "\"subject\":\"s-%" PRIu64 "\",%s\"datacontenttype\":\"application/json\","
                       "\"data\":{%s,\"pad\":\"",
                       id, type, subject, da, fields);
    if (len < 0 || (size_t) len >= sizeof ev) {
        die("event too long");
    }
    evbuffer_add(out, ev, (size_t) len);
    const char tail[] = "\"}}";
    int pad = EVENT_SIZE - len - (int) (sizeof tail - 1);
    static char xs[EVENT_SIZE];
    if (!xs[0]) {
        memset(xs, 'x', sizeof xs);
    }
    if (pad > 0) {
        evbuffer_add(out, xs, (size_t) pad);
    }
    evbuffer_add(out, tail, sizeof tail - 1);
}

/* The same on subject s-k (k % SUBJECTS without a deliverafter). */
static void add_event(struct evbuffer *out, const char *type, uint64_t k, const char *after,
                      const char *fields)
{
    add_event_on(out, type, k, after ? k : k % SUBJECTS, after, fields);
}

/* ---- a backlog ---- */

typedef struct backlog {
    const char *type;
    uint64_t n, batch, next;
    unsigned busy;
    bool finished;
} backlog;

static backlog bl;

static void backlog_send(struct evhttp_connection *c);

static void on_backlog_answer(struct evhttp_request *req, void *arg)
{
    int code = req ? evhttp_request_get_response_code(req) : 0;
    bl.busy--;
    if (code != 201) {
        char *b = body_of(req);
        die("publish: answer %d (want 201): %.200s", code, b);
    }
    backlog_send(arg);
}

static void backlog_send(struct evhttp_connection *c)
{
    if (bl.next >= bl.n) {
        bl.finished = bl.busy == 0;
        return;
    }
    struct evhttp_request *req =
        new_request(on_backlog_answer, c, "application/cloudevents-batch+json");
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, "[", 1);
    for (uint64_t i = 0; i < bl.batch && bl.next < bl.n; i++) {
        if (i) {
            evbuffer_add(out, ",", 1);
        }
        char f[48];
        snprintf(f, sizeof f, "\"k\":%" PRIu64, bl.next);
        add_event(out, bl.type, bl.next++, NULL, f);
    }
    evbuffer_add(out, "]", 1);
    bl.busy++;
    make_request(c, req, EVHTTP_REQ_POST, "/events");
}

/* Publishes n events of 'type' in batches of 500 on two connections. */
static void publish_backlog(const char *type, uint64_t n)
{
    bl = (backlog){type, n, 500, 0, 0, false};
    struct evhttp_connection *c[2] = {connect_engine(), connect_engine()};
    int64_t t0 = rt_ns();
    backlog_send(c[0]);
    backlog_send(c[1]);
    if (!run_until(&bl.finished, 600000)) {
        die("publish: not finished after 600 s");
    }
    double secs = (double) (rt_ns() - t0) / 1e9;
    fprintf(stderr, "mt_delivery: published %" PRIu64 " events of type %s in %.2f s (%.0f/s)\n",
            n, type, secs, (double) n / secs);
    evhttp_connection_free(c[0]);
    evhttp_connection_free(c[1]);
}

/* The log's last sequence, from GET /healthz. */
static uint64_t log_head(void)
{
    answer a;
    call(&a, EVHTTP_REQ_GET, "/healthz", NULL);
    json_t *o = a.code == 200 ? json_loads(a.body, 0, NULL) : NULL;
    const char *h = json_string_value(json_object_get(o, "head"));
    if (!h) {
        die("GET /healthz: answer %d: %s", a.code, a.body);
    }
    uint64_t head = strtoull(h, NULL, 10);
    json_decref(o);
    free(a.body);
    return head;
}

/* Creates subscription 'name' over HTTP from the JSON definition 'def'. */
static void sub_create(const char *name, const char *def)
{
    char path[256];
    snprintf(path, sizeof path, "/subscriptions/%s", name);
    answer a;
    call(&a, EVHTTP_REQ_PUT, path, def);
    if (a.code != 201) {
        die("PUT %s: answer %d (want 201): %s\n  definition: %s", path, a.code, a.body, def);
    }
    free(a.body);
}

static void sub_delete(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "/subscriptions/%s", name);
    answer a;
    call(&a, EVHTTP_REQ_DELETE, path, NULL);
    if (a.code != 204) {
        fail("DELETE %s: answer %d (want 204): %s", path, a.code, a.body);
    }
    free(a.body);
}

/* ---- Server-Sent Events clients ---- */

typedef struct sse_cli sse_cli;

/* Called for each event: its sequence, the number after 'key' in it, the receipt time. */
typedef void (*sse_event_fn)(sse_cli *c, uint64_t seq, int64_t value, int64_t now);

struct sse_cli {
    struct evhttp_connection *evcon;
    struct evbuffer *buf;   /* the start of an event not yet complete */
    const char *key;        /* e.g. "\"pubns\":" */
    sse_event_fn on_event;
    uint64_t last_seq;      /* 0 = none yet */
    uint64_t got;           /* events received */
    const char *text;       /* the event being handed to on_event, and its length: */
    size_t len;             /* valid only during that call */
    bool connected, ended;
};

static unsigned sse_connected, sse_connecting;

/* One "id: ...\nevent: ...\ndata: ...\n" block (without its blank line). */
static void sse_block(sse_cli *c, const char *p, size_t n, int64_t now)
{
    if (n == 0 || p[0] == ':') {
        return; /* a comment: the heartbeat */
    }
    if (n < 4 || memcmp(p, "id: ", 4) != 0) {
        fail("SSE: an event without an id line first: %.60s", p);
        return;
    }
    uint64_t seq = strtoull(p + 4, NULL, 10);
    const char *data = memmem(p, n, "\ndata: ", 7);
    /*
     * The key is in the event's data, its last member: looked for from the
     * end (memmem from the front was a fifth of this tool's time).
     */
    size_t kl = strlen(c->key);
    const char *k = NULL;
    for (const char *q = p + n - kl; data && q > data; q--) {
        if (*q == c->key[0] && memcmp(q, c->key, kl) == 0) {
            k = q;
            break;
        }
    }
    if (!k) {
        fail("SSE: event %" PRIu64 " has no %s in its data", seq, c->key);
        return;
    }
    k += kl;
    if (*k == '"') {
        k++;
    }
    int64_t value = strtoll(k, NULL, 10);
    if (seq <= c->last_seq) {
        fail("SSE: event %" PRIu64 " after %" PRIu64 " (duplicate or out of order)", seq,
             c->last_seq);
        return;
    }
    c->got++;
    c->text = p;
    c->len = n;
    c->on_event(c, seq, value, now);
    c->text = NULL;
    c->last_seq = seq;
}

static void sse_on_chunk(struct evhttp_request *req, void *arg)
{
    sse_cli *c = arg;
    int64_t now = rt_ns();
    evbuffer_add_buffer(c->buf, evhttp_request_get_input_buffer(req));
    size_t len = evbuffer_get_length(c->buf);
    const char *p = (const char *) evbuffer_pullup(c->buf, -1);
    size_t used = 0;
    const char *q = p;
    for (;;) {
        /* The blank line that ends a block: a newline right after a newline. */
        const char *end = memchr(q, '\n', len - (size_t) (q - p));
        if (!end || end + 1 >= p + len) {
            break;
        }
        if (end[1] != '\n') {
            q = end + 1;
            continue;
        }
        sse_block(c, p + used, (size_t) (end - (p + used)) + 1, now);
        used = (size_t) (end - p) + 2;
        q = p + used;
    }
    evbuffer_drain(c->buf, used);
}

static int sse_on_headers(struct evhttp_request *req, void *arg)
{
    sse_cli *c = arg;
    int code = evhttp_request_get_response_code(req);
    sse_connecting--;
    if (code != 200) {
        fail("GET /subscribe: answer %d (want 200)", code);
        c->ended = true;
        return -1;
    }
    c->connected = true;
    sse_connected++;
    return 0;
}

static void sse_on_done(struct evhttp_request *req, void *arg)
{
    sse_cli *c = arg;
    if (!c->ended) {
        int code = req ? evhttp_request_get_response_code(req) : 0;
        fail("SSE stream ended (answer %d) after %" PRIu64 " events", code, c->got);
        if (!c->connected) {
            sse_connecting--;
        }
    }
    c->ended = true;
}

static void sse_open(sse_cli *c, const char *topic, const char *key, sse_event_fn fn)
{
    c->evcon = connect_engine();
    c->buf = evbuffer_new();
    c->key = key;
    c->on_event = fn;
    struct evhttp_request *req = new_request(sse_on_done, c, NULL);
    evhttp_request_set_header_cb(req, sse_on_headers);
    evhttp_request_set_chunked_cb(req, sse_on_chunk);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Accept", "text/event-stream");
    char path[256];
    snprintf(path, sizeof path, "/subscribe?topic=%s", topic);
    sse_connecting++;
    make_request(c->evcon, req, EVHTTP_REQ_GET, path);
}

/* Opens 'n' streams, at most CONNECTING_MAX being set up at a time. */
static void sse_open_all(sse_cli *cs, unsigned n, const char *topic, const char *key,
                         sse_event_fn fn)
{
    int64_t deadline = rt_ns() + 120 * (int64_t) 1000000000;
    unsigned next = 0;
    while (sse_connected + errors < n) {
        while (next < n && sse_connecting < CONNECTING_MAX) {
            sse_open(&cs[next++], topic, key, fn);
        }
        if (errors) {
            die("SSE: cannot open the streams");
        }
        if (rt_ns() > deadline) {
            die("SSE: %u of %u streams open after 120 s", sse_connected, n);
        }
        event_base_loop(base, EVLOOP_ONCE);
    }
}

static void sse_close_all(sse_cli *cs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        cs[i].ended = true; /* freeing the connection ends the stream: not an error */
        if (cs[i].evcon) {
            evhttp_connection_free(cs[i].evcon);
        }
        if (cs[i].buf) {
            evbuffer_free(cs[i].buf);
        }
    }
}

/* ---- sse: fan-out under an open-loop publisher ---- */

typedef struct pub_conn {
    struct evhttp_connection *evcon;
    int64_t sent;             /* when the request in flight was made */
    bool busy;
} pub_conn;

static struct fan {
    /* publisher */
    pub_conn conns[PUB_CONNS];
    uint64_t rate;            /* events/s */
    int64_t t0;               /* publishing started */
    int64_t win0, win1;       /* the measured span [win0, win1) */
    uint64_t sent, ok;        /* events sent, answered 201 */
    uint64_t measured;        /* events sent inside the span */
    unsigned busy;
    bool stopped;
    /* receivers */
    samples pub_lat;          /* publish requests sent inside the span, send to 201 */
    samples lat;              /* deliveries of events sent inside the span */
    uint64_t in_window;       /* deliveries received inside the span */
    uint64_t received;        /* all deliveries */
} fan;

static void fan_fill(void);

static void on_fan_answer(struct evhttp_request *req, void *arg)
{
    pub_conn *pc = arg;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    pc->busy = false;
    fan.busy--;
    if (code == 201) {
        fan.ok++;
        if (pc->sent >= fan.win0) {
            samples_add(&fan.pub_lat, rt_ns() - pc->sent);
        }
    } else {
        char *b = body_of(req);
        fail("publish: answer %d (want 201): %.200s", code, b);
        free(b);
    }
    fan_fill();
}

/* Sends every event that is due by now (event k is due at t0 + k/rate) on free connections. */
static void fan_fill(void)
{
    if (fan.stopped) {
        return;
    }
    int64_t now = rt_ns();
    if (now >= fan.win1) {
        fan.stopped = true;
        return;
    }
    uint64_t due = (uint64_t) ((double) (now - fan.t0) * (double) fan.rate / 1e9) + 1;
    for (int i = 0; i < PUB_CONNS && fan.sent < due; i++) {
        pub_conn *pc = &fan.conns[i];
        if (pc->busy) {
            continue;
        }
        struct evhttp_request *req = new_request(on_fan_answer, pc, "application/cloudevents+json");
        int64_t t = rt_ns();
        char f[64];
        snprintf(f, sizeof f, "\"pubns\":%" PRId64, t);
        add_event(evhttp_request_get_output_buffer(req), "fan.tick", fan.sent, NULL, f);
        fan.sent++;
        if (t >= fan.win0) {
            fan.measured++;
        }
        pc->sent = t;
        pc->busy = true;
        fan.busy++;
        make_request(pc->evcon, req, EVHTTP_REQ_POST, "/events");
    }
}

static void fan_on_event(sse_cli *c, uint64_t seq, int64_t pubns, int64_t now)
{
    (void) c;
    (void) seq;
    fan.received++;
    if (now >= fan.win0 && now < fan.win1) {
        fan.in_window++;
    }
    if (pubns >= fan.win0 && pubns < fan.win1) {
        samples_add(&fan.lat, now - pubns);
    }
}

static void fan_tick(evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    (void) arg;
    fan_fill();
}

/* The publisher's thread: sends until win1, then waits for the answers (at most TIMEOUT_S). */
static void *fan_publisher(void *arg)
{
    struct event_base *b = arg;
    int64_t deadline = fan.win1 + (int64_t) (TIMEOUT_S + 1) * 1000000000;
    while ((!fan.stopped || fan.busy) && rt_ns() < deadline) {
        event_base_loop(b, EVLOOP_ONCE);
    }
    return NULL;
}

static bool fan_drained(sse_cli *cs, unsigned n)
{
    if (!fan.stopped || fan.busy) {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        if (cs[i].got < fan.ok && !cs[i].ended) {
            return false;
        }
    }
    return true;
}

static int cmd_sse(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},     {"clients", required_argument, NULL, 'c'},
        {"rate", required_argument, NULL, 'r'},    {"seconds", required_argument, NULL, 's'},
        {"warmup", required_argument, NULL, 'w'},  {"engine-pid", required_argument, NULL, 'p'},
        {"name", required_argument, NULL, 'N'},    {NULL, 0, NULL, 0},
    };
    const char *url = NULL;
    unsigned n = 1;
    uint64_t secs = 10, warmup = 1;
    fan.rate = 200;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'c': n = (unsigned) parse_u64("clients", optarg, 1, MAX_CLIENTS); break;
        case 'r': fan.rate = parse_u64("rate", optarg, 1, 100000); break;
        case 's': secs = parse_u64("seconds", optarg, 1, 3600); break;
        case 'w': warmup = parse_u64("warmup", optarg, 0, 600); break;
        case 'p': engine_pid = (long) parse_u64("engine-pid", optarg, 1, INT32_MAX); break;
        case 'N': row_name = optarg; break;
        default: die("usage: mt_delivery sse --url BASE --clients C --rate R --seconds S "
                     "[--warmup S] [--engine-pid PID] [--name NAME]");
        }
    }
    raise_nofile(n + PUB_CONNS + 64);
    setup(url);
    init_run_id();
    sse_cli *cs = calloc(n, sizeof *cs);
    if (!cs) {
        die("out of memory");
    }
    int64_t tc = rt_ns();
    sse_open_all(cs, n, "fan.%23", "\"pubns\":", fan_on_event);
    fprintf(stderr, "mt_delivery sse: %u streams open in %.2f s\n", n,
            (double) (rt_ns() - tc) / 1e9);

    /*
     * The publisher has a thread and an event base of its own, so that its
     * sends and the timing of its answers do not wait while this thread
     * reads a thousand streams.
     */
    struct event_base *pub_base = event_base_new();
    if (!pub_base) {
        die("event_base_new failed");
    }
    for (int i = 0; i < PUB_CONNS; i++) {
        fan.conns[i].evcon = connect_engine_on(pub_base);
    }
    struct event *pub_tick = event_new(pub_base, -1, EV_PERSIST, fan_tick, NULL);
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(pub_tick, &tv);
    fan.t0 = rt_ns();
    fan.win0 = fan.t0 + (int64_t) warmup * 1000000000;
    fan.win1 = fan.win0 + (int64_t) secs * 1000000000;
    pthread_t pub_thread;
    if (pthread_create(&pub_thread, NULL, fan_publisher, pub_base)) {
        die("pthread_create failed");
    }
    cpu_span cpu = {.pid = engine_pid};
    bool started = false;
    while (rt_ns() < fan.win1) {
        if (!started && rt_ns() >= fan.win0) {
            cpu_begin(&cpu);
            started = true;
        }
        event_base_loop(base, EVLOOP_ONCE);
    }
    cpu_end(&cpu);
    /* The publisher stops at win1 and returns once its last answers are in. */
    pthread_join(pub_thread, NULL);
    event_free(pub_tick);
    for (int i = 0; i < PUB_CONNS; i++) {
        evhttp_connection_free(fan.conns[i].evcon);
        fan.conns[i].evcon = NULL;
    }
    event_base_free(pub_base);

    /* What was published must reach every client, each event once and in order. */
    int64_t deadline = rt_ns() + DRAIN_S * (int64_t) 1000000000;
    while (!fan_drained(cs, n) && rt_ns() < deadline) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    int64_t drain_ms = (rt_ns() - fan.win1) / 1000000;
    uint64_t missing = 0;
    for (unsigned i = 0; i < n; i++) {
        if (cs[i].got < fan.ok) {
            missing += fan.ok - cs[i].got;
        }
    }
    if (missing) {
        fail("SSE: %" PRIu64 " deliveries missing %d s after publishing stopped", missing,
             DRAIN_S);
    }
    if (fan.busy) {
        fail("publish: %u requests unanswered", fan.busy);
    }
    double pub_rate = (double) fan.measured / (double) secs;
    fprintf(stderr,
            "mt_delivery sse: %u clients; %" PRIu64 " events published in all; the last "
            "deliveries came %" PRId64 " ms after the span ended\n",
            n, fan.ok, drain_ms);
    char defname[32];
    if (!row_name) {
        snprintf(defname, sizeof defname, "sse-c%u", n);
        row_name = defname;
    }
    print_row(row_name, n, fan.measured, fan.lat.n, (double) secs,
              (double) fan.in_window / (double) secs, "e2e", &fan.lat, &cpu, errors);
    /* The publisher's side: its rate and its answers' latency under the fan-out. */
    char pubname[48];
    snprintf(pubname, sizeof pubname, "%s-pub", row_name);
    print_row(pubname, PUB_CONNS, fan.measured, fan.pub_lat.n, (double) secs, pub_rate, "pub",
              &fan.pub_lat, NULL, errors);
    errors_banner(row_name);
    sse_close_all(cs, n);
    return errors ? 1 : 0;
}

/* ---- pull consumers ---- */

typedef struct consumer consumer;

/* Called for each pulled message: its sequence, its event's text, the receipt time. */
typedef void (*pulled_fn)(uint64_t seq, const char *item, size_t len, int64_t now);

struct consumer {
    struct evhttp_connection *evcon;
    int64_t sent;              /* the request in flight was made then */
    struct evbuffer *ack;      /* the ack body being built */
    unsigned ntokens;          /* tokens in it */
    bool busy;
};

static struct pulls {
    const char *sub;
    unsigned max;
    uint64_t want;             /* stop once this many distinct events are acked */
    uint64_t acked;            /* acknowledged (count from the answers) */
    uint64_t empty;            /* pulls that came back empty */
    seqset seen;
    samples pull_lat, ack_lat;
    int64_t last_ack;          /* when the last ack answer came */
    unsigned busy;
    bool stop;
    pulled_fn on_item;         /* or NULL */
    consumer cons[MAX_CONSUMERS];
} pl;

static void pull_send(consumer *c);

static void on_ack_answer(struct evhttp_request *req, void *arg)
{
    consumer *c = arg;
    int64_t now = rt_ns();
    int code = req ? evhttp_request_get_response_code(req) : 0;
    c->busy = false;
    pl.busy--;
    char *b = body_of(req);
    const char *cnt = strstr(b, "\"count\":");
    uint64_t n = cnt ? strtoull(cnt + 8, NULL, 10) : 0;
    if (code != 200 || n != c->ntokens) {
        fail("ack of %u leases: answer %d: %.200s", c->ntokens, code, b);
    }
    free(b);
    samples_add(&pl.ack_lat, now - c->sent);
    pl.acked += n;
    pl.last_ack = now;
    if (pl.seen.distinct >= pl.want) {
        pl.stop = true;
    }
    pull_send(c);
}

static void on_pull_answer(struct evhttp_request *req, void *arg)
{
    consumer *c = arg;
    int64_t now = rt_ns();
    int code = req ? evhttp_request_get_response_code(req) : 0;
    c->busy = false;
    pl.busy--;
    char *b = body_of(req);
    if (code != 200) {
        fail("pull: answer %d: %.200s", code, b);
        free(b);
        pl.stop = true;
        return;
    }
    /*
     * The answer is [{"lease":"SEQ-NONCE","attempt":N,"event":{...}},...],
     * made by the engine in this exact form: the tokens are found by their
     * prefix rather than by parsing the whole body with jansson, which would
     * cost this tool more CPU than the engine spends on a batch.
     */
    static const char tag[] = "{\"lease\":\"";
    const size_t tl = sizeof tag - 1;
    evbuffer_drain(c->ack, evbuffer_get_length(c->ack));
    evbuffer_add_printf(c->ack, "{\"leases\":[");
    c->ntokens = 0;
    const char *p = strstr(b, tag);
    while (p) {
        const char *tok = p + tl;
        const char *end = strchr(tok, '"');
        if (!end) {
            fail("pull: a lease token without its end");
            break;
        }
        uint64_t seq = strtoull(tok, NULL, 10);
        const char *next = strstr(end, tag);
        if (!seqset_add(&pl.seen, seq)) {
            fail("pull: event %" PRIu64 " delivered again", seq);
        }
        if (pl.on_item) {
            pl.on_item(seq, end, next ? (size_t) (next - end) : strlen(end), now);
        }
        evbuffer_add_printf(c->ack, "%s\"%.*s\"", c->ntokens ? "," : "", (int) (end - tok), tok);
        c->ntokens++;
        p = next;
    }
    evbuffer_add_printf(c->ack, "]}");
    free(b);
    if (c->ntokens == 0) {
        pl.empty++;
        pull_send(c);
        return;
    }
    samples_add(&pl.pull_lat, now - c->sent);
    struct evhttp_request *ack = new_request(on_ack_answer, c, "application/json");
    evbuffer_add_buffer(evhttp_request_get_output_buffer(ack), c->ack);
    char path[256];
    snprintf(path, sizeof path, "/subscriptions/%s/ack", pl.sub);
    c->sent = rt_ns();
    c->busy = true;
    pl.busy++;
    make_request(c->evcon, ack, EVHTTP_REQ_POST, path);
}

static void pull_send(consumer *c)
{
    if (pl.stop) {
        return;
    }
    struct evhttp_request *req = new_request(on_pull_answer, c, NULL);
    char path[256];
    snprintf(path, sizeof path, "/subscriptions/%s/pull?max=%u&wait=1s", pl.sub, pl.max);
    c->sent = rt_ns();
    c->busy = true;
    pl.busy++;
    make_request(c->evcon, req, EVHTTP_REQ_POST, path);
}

static void pull_start(unsigned k)
{
    for (unsigned i = 0; i < k; i++) {
        pl.cons[i].evcon = connect_engine();
        pl.cons[i].ack = evbuffer_new();
        pull_send(&pl.cons[i]);
    }
}

static int cmd_pull(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},       {"sub", required_argument, NULL, 's'},
        {"consumers", required_argument, NULL, 'k'}, {"events", required_argument, NULL, 'n'},
        {"max", required_argument, NULL, 'm'},       {"engine-pid", required_argument, NULL, 'p'},
        {"name", required_argument, NULL, 'N'},      {NULL, 0, NULL, 0},
    };
    const char *url = NULL;
    unsigned k = 1;
    pl.max = 100;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 's': pl.sub = optarg; break;
        case 'k': k = (unsigned) parse_u64("consumers", optarg, 1, MAX_CONSUMERS); break;
        case 'n': pl.want = parse_u64("events", optarg, 1, 100000000); break;
        case 'm': pl.max = (unsigned) parse_u64("max", optarg, 1, 1000); break;
        case 'p': engine_pid = (long) parse_u64("engine-pid", optarg, 1, INT32_MAX); break;
        case 'N': row_name = optarg; break;
        default: die("usage: mt_delivery pull --url BASE --sub NAME --consumers K --events N "
                     "[--max M] [--engine-pid PID] [--name NAME]");
        }
    }
    if (!pl.sub || !pl.want) {
        die("pull: --sub and --events are required");
    }
    raise_nofile(k + 64);
    setup(url);
    init_run_id();
    char type[128], def[512];
    snprintf(type, sizeof type, "%s.job", pl.sub);
    uint64_t head = log_head();
    publish_backlog(type, pl.want);
    snprintf(def, sizeof def,
             "{\"topics\": [\"%s.#\"], \"deliver\": \"pull\", \"start\": %" PRIu64 "}",
             pl.sub, head);
    sub_create(pl.sub, def);
    cpu_span cpu = {.pid = engine_pid};
    cpu_begin(&cpu);
    int64_t t0 = rt_ns();
    pull_start(k);
    bool done = false;
    int64_t deadline = t0 + 300 * (int64_t) 1000000000;
    while (!(pl.stop && pl.busy == 0) && rt_ns() < deadline) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    done = pl.stop && pl.busy == 0;
    cpu_end(&cpu);
    if (!done || pl.seen.distinct < pl.want) {
        fail("pull: %" PRIu64 " of %" PRIu64 " events acknowledged after 300 s", pl.seen.distinct,
             pl.want);
    }
    sub_delete(pl.sub);
    double secs = pl.last_ack > t0 ? (double) (pl.last_ack - t0) / 1e9 : 0;
    char defname[32], ackname[48];
    if (!row_name) {
        snprintf(defname, sizeof defname, "pull-k%u", k);
        row_name = defname;
    }
    fprintf(stderr,
            "mt_delivery pull: %u consumers, %" PRIu64 " events acked in %.2f s; %zu pulls, "
            "%" PRIu64 " empty; final long polls ended %.2f s later\n",
            k, pl.acked, secs, pl.pull_lat.n, pl.empty, (double) (rt_ns() - pl.last_ack) / 1e9);
    snprintf(ackname, sizeof ackname, "%s-ack", row_name);
    double rate = secs > 0 ? (double) pl.acked / secs : 0;
    print_row(row_name, k, pl.want, pl.acked, secs, rate, "pull", &pl.pull_lat, &cpu, errors);
    print_row(ackname, k, pl.want, pl.acked, secs, rate, "ack", &pl.ack_lat, &cpu, errors);
    errors_banner(row_name);
    return errors ? 1 : 0;
}

/* ---- webhook receiver ---- */

#define HOOK_SECRET "whsec_bW9vbnRpZGUtYmVuY2gtc2VjcmV0LTAxMjM0NTY3"

/* Called for each delivery: its sequence (from webhook-id), its body, the receipt time. */
typedef void (*hook_fn)(uint64_t seq, const char *body, int64_t now);

static struct hooks {
    int port;                  /* where the receiver listens */
    char path[128];            /* "/hook/NAME" */
    char id_prefix[80];        /* "NAME-": the engine's webhook-id is NAME-SEQ */
    seqset seen;
    uint64_t calls;
    int64_t last;              /* receipt of the last new event */
    hook_fn on_delivery;       /* or NULL */
} hk;

static void on_hook(struct evhttp_request *req, void *arg)
{
    (void) arg;
    int64_t now = rt_ns();
    const char *uri = evhttp_request_get_uri(req);
    const char *id = evhttp_find_header(evhttp_request_get_input_headers(req), "webhook-id");
    size_t idl = strlen(hk.id_prefix);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST || strcmp(uri, hk.path) != 0 || !id ||
        strncmp(id, hk.id_prefix, idl) != 0) {
        fail("webhook: unexpected request %s (webhook-id %s)", uri, id ? id : "none");
        evhttp_send_reply(req, 400, "Bad Request", NULL);
        return;
    }
    hk.calls++;
    uint64_t seq = strtoull(id + idl, NULL, 10);
    if (seqset_add(&hk.seen, seq)) {
        hk.last = now;
        if (hk.on_delivery) {
            char *b = body_of(req);
            hk.on_delivery(seq, b, now);
            free(b);
        }
    }
    evhttp_send_reply(req, 204, "No Content", NULL);
}

/* Listens on a free loopback port for the webhook of subscription 'sub'. */
static void hook_listen(const char *sub, hook_fn fn)
{
    struct evhttp *http = evhttp_new(base);
    struct evhttp_bound_socket *bs = http ? evhttp_bind_socket_with_handle(http, "127.0.0.1", 0)
                                          : NULL;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (!bs || getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *) &sa, &sl)) {
        die("webhook receiver: cannot listen on 127.0.0.1");
    }
    evhttp_set_gencb(http, on_hook, NULL);
    hk.port = ntohs(sa.sin_port);
    snprintf(hk.path, sizeof hk.path, "/hook/%s", sub);
    snprintf(hk.id_prefix, sizeof hk.id_prefix, "%s-", sub);
    hk.on_delivery = fn;
}

/* The JSON definition of a webhook subscription of 'topic' delivering to this tool. */
static void hook_def(char *out, size_t outlen, const char *topic, unsigned concurrency,
                     uint64_t start)
{
    snprintf(out, outlen,
             "{\"topics\": [\"%s\"], \"deliver\": {\"webhook\": {\"url\": "
             "\"http://127.0.0.1:%d%s\", \"secret\": \"" HOOK_SECRET "\", \"concurrency\": %u}}, "
             "\"start\": %" PRIu64 "}",
             topic, hk.port, hk.path, concurrency, start);
}

static int cmd_webhook(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},         {"sub", required_argument, NULL, 's'},
        {"events", required_argument, NULL, 'n'},      {"concurrency", required_argument, NULL, 'c'},
        {"engine-pid", required_argument, NULL, 'p'},  {"name", required_argument, NULL, 'N'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *sub = NULL;
    unsigned conc = 4;
    uint64_t n = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 's': sub = optarg; break;
        case 'n': n = parse_u64("events", optarg, 1, 100000000); break;
        case 'c': conc = (unsigned) parse_u64("concurrency", optarg, 1, 64); break;
        case 'p': engine_pid = (long) parse_u64("engine-pid", optarg, 1, INT32_MAX); break;
        case 'N': row_name = optarg; break;
        default: die("usage: mt_delivery webhook --url BASE --sub NAME --concurrency C --events N "
                     "[--engine-pid PID] [--name NAME]");
        }
    }
    if (!sub || !n) {
        die("webhook: --sub and --events are required");
    }
    raise_nofile(256);
    setup(url);
    init_run_id();
    hook_listen(sub, NULL);
    char type[128], topic[128], def[1024];
    snprintf(type, sizeof type, "%s.sent", sub);
    snprintf(topic, sizeof topic, "%s.#", sub);
    uint64_t head = log_head();
    publish_backlog(type, n);
    hook_def(def, sizeof def, topic, conc, head);
    cpu_span cpu = {.pid = engine_pid};
    cpu_begin(&cpu);
    int64_t t0 = rt_ns();
    sub_create(sub, def);
    int64_t deadline = t0 + 300 * (int64_t) 1000000000;
    while (hk.seen.distinct < n && rt_ns() < deadline) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    cpu_end(&cpu);
    if (hk.seen.distinct < n) {
        fail("webhook: %" PRIu64 " of %" PRIu64 " events received after 300 s",
             hk.seen.distinct, n);
    }
    /* Received is not yet acknowledged: wait for the engine's count too. */
    uint64_t handled = 0;
    int64_t hdeadline = rt_ns() + 30 * (int64_t) 1000000000;
    while ((handled = handled_of(sub)) < n && rt_ns() < hdeadline) {
        bool never = false;
        run_until(&never, 50);
    }
    if (handled != n) {
        fail("webhook: the engine counts %" PRIu64 " handled, %" PRIu64 " were delivered",
             handled, n);
    }
    if (hk.calls != hk.seen.distinct) {
        fail("webhook: %" PRIu64 " requests for %" PRIu64 " events (redeliveries)", hk.calls,
             hk.seen.distinct);
    }
    sub_delete(sub);
    double secs = hk.last > t0 ? (double) (hk.last - t0) / 1e9 : 0;
    char defname[32];
    if (!row_name) {
        snprintf(defname, sizeof defname, "hook-c%u", conc);
        row_name = defname;
    }
    print_row(row_name, conc, n, hk.seen.distinct, secs,
              secs > 0 ? (double) hk.seen.distinct / secs : 0, NULL, NULL, &cpu, errors);
    errors_banner(row_name);
    return errors ? 1 : 0;
}

/* ---- sched: deliverafter accuracy through three consumers ---- */

static struct sched {
    uint64_t n;
    samples late_pull, late_hook, late_sse;
    uint64_t early_pull, early_hook, early_sse;
    uint64_t got_sse;
} sc;

/* The number after "due":" in an event's text; 0 if absent. */
static int64_t due_in(const char *text, size_t len)
{
    const char *d = memmem(text, len, "\"due\":\"", 7);
    return d ? strtoll(d + 7, NULL, 10) : 0;
}

static void late(samples *s, uint64_t *early, int64_t due, int64_t now, const char *who)
{
    if (!due) {
        fail("sched %s: a delivery without its due time", who);
        return;
    }
    samples_add(s, now - due);
    if (now < due) {
        ++*early;
    }
}

static void sched_on_pulled(uint64_t seq, const char *item, size_t len, int64_t now)
{
    (void) seq;
    late(&sc.late_pull, &sc.early_pull, due_in(item, len), now, "pull");
}

static void sched_on_hook(uint64_t seq, const char *body, int64_t now)
{
    (void) seq;
    late(&sc.late_hook, &sc.early_hook, due_in(body, strlen(body)), now, "webhook");
}

static void sched_on_sse(sse_cli *c, uint64_t seq, int64_t due, int64_t now)
{
    (void) c;
    (void) seq;
    sc.got_sse++;
    late(&sc.late_sse, &sc.early_sse, due, now, "sse");
}

static bool sched_published;

static void on_sched_answer(struct evhttp_request *req, void *arg)
{
    (void) arg;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code != 201) {
        char *b = body_of(req);
        die("publish: answer %d (want 201): %.200s", code, b);
    }
    sched_published = true;
}

/* deliverafter as RFC 3339 UTC with microseconds; *due_ns gets the same instant. */
static void rfc3339_us(int64_t ns, char *out, size_t outlen, int64_t *due_ns)
{
    int64_t us = ns / 1000;
    time_t s = (time_t) (us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char b[32];
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outlen, "%s.%06lldZ", b, (long long) (us % 1000000));
    *due_ns = us * 1000;
}

static int cmd_sched(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},        {"events", required_argument, NULL, 'n'},
        {"handler", required_argument, NULL, 'H'},    {"engine-pid", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *handler = NULL;
    sc.n = 500;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'n': sc.n = parse_u64("events", optarg, 1, 100000); break;
        case 'H': handler = optarg; break;
        case 'p': engine_pid = (long) parse_u64("engine-pid", optarg, 1, INT32_MAX); break;
        default: die("usage: mt_delivery sched --url BASE --events N --handler PATH "
                     "[--engine-pid PID]");
        }
    }
    if (!handler || strchr(handler, '"') || strchr(handler, '\\')) {
        die("sched: --handler is required (a path without quotes or backslashes)");
    }
    raise_nofile(256);
    setup(url);
    init_run_id();
    uint64_t head = log_head();
    char def[1024];
    snprintf(def, sizeof def,
             "{\"topics\": [\"sched.#\"], \"deliver\": \"pull\", \"start\": %" PRIu64 "}",
             head);
    sub_create("schedpull", def);
    hook_listen("schedhook", sched_on_hook);
    hook_def(def, sizeof def, "sched.#", 4, head);
    sub_create("schedhook", def);
    snprintf(def, sizeof def,
             "{\"topics\": [\"sched.#\"], \"handler\": \"%s\", \"start\": %" PRIu64 "}", handler,
             head);
    sub_create("schedlua", def);
    sse_cli sse = {0};
    sse_open_all(&sse, 1, "fired.%23", "\"due\":\"", sched_on_sse);
    pl.sub = "schedpull";
    pl.max = 100;
    pl.want = sc.n;
    pl.on_item = sched_on_pulled;
    pull_start(1);

    /* One atomic batch: every event is due 1 s to 5 s after it is sent. */
    struct evhttp_connection *pub = connect_engine();
    struct evhttp_request *req =
        new_request(on_sched_answer, NULL, "application/cloudevents-batch+json");
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    int64_t t0 = rt_ns(), last_due = 0;
    evbuffer_add(out, "[", 1);
    for (uint64_t k = 0; k < sc.n; k++) {
        char after[48], f[64];
        int64_t due;
        int64_t at = t0 + 1000000000 + (int64_t) (4e9 * (double) k / (double) sc.n);
        rfc3339_us(at, after, sizeof after, &due);
        last_due = due;
        snprintf(f, sizeof f, "\"due\":\"%" PRId64 "\",\"k\":%" PRIu64, due, k);
        if (k) {
            evbuffer_add(out, ",", 1);
        }
        add_event(out, "sched.due", k, after, f);
    }
    evbuffer_add(out, "]", 1);
    cpu_span cpu = {.pid = engine_pid};
    cpu_begin(&cpu);
    make_request(pub, req, EVHTTP_REQ_POST, "/events");
    if (!run_until(&sched_published, 30000)) {
        die("sched: the batch was not answered in 30 s");
    }
    int64_t deadline = last_due + 20 * (int64_t) 1000000000;
    while ((pl.seen.distinct < sc.n || hk.seen.distinct < sc.n || sc.got_sse < sc.n) &&
           rt_ns() < deadline) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    cpu_end(&cpu);
    double secs = (double) (rt_ns() - t0) / 1e9;
    pl.stop = true;
    int64_t idle = rt_ns() + 5 * (int64_t) 1000000000;
    while (pl.busy && rt_ns() < idle) {
        event_base_loop(base, EVLOOP_ONCE); /* the last long poll, before the delete */
    }
    struct {
        const char *name, *how;
        uint64_t got, early;
        samples *s;
    } rows[] = {
        {"sched-pull", "pull consumer", pl.seen.distinct, sc.early_pull, &sc.late_pull},
        {"sched-hook", "webhook", hk.seen.distinct, sc.early_hook, &sc.late_hook},
        {"sched-lua-sse", "Lua handler re-emitting, read over SSE", sc.got_sse, sc.early_sse,
         &sc.late_sse},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        /* Each missing and each early delivery is an error. */
        uint64_t missing = sc.n > rows[i].got ? sc.n - rows[i].got : 0;
        if (missing) {
            fprintf(stderr,
                    "mt_delivery: error: %s: %" PRIu64 " of %" PRIu64 " scheduled events "
                    "received 20 s after the last was due\n",
                    rows[i].name, rows[i].got, sc.n);
        }
        if (rows[i].early) {
            fprintf(stderr,
                    "mt_delivery: error: %s: %" PRIu64 " of %" PRIu64 " events received BEFORE "
                    "their deliverafter time (%s)\n",
                    rows[i].name, rows[i].early, rows[i].got, rows[i].how);
        }
        errors += missing + rows[i].early;
        print_row(rows[i].name, 1, sc.n, rows[i].got, secs, -1, "late", rows[i].s,
                  i == 0 ? &cpu : NULL, missing + rows[i].early);
    }
    sub_delete("schedpull");
    sub_delete("schedhook");
    sub_delete("schedlua");
    errors_banner("sched");
    return errors ? 1 : 0;
}

/* ---- live: Lua handlers' end-to-end latency under an open-loop publisher ---- */

#define LIVE_CONNS_MAX 16
#define LIVE_BATCH_MAX 2000        /* events per request at most: ~600 KB, under max_body */
#define LIVE_SUBS_MAX 8
#define LIVE_MAX_THREADS 256
#define LIVE_CAUGHT_UP_S 3         /* extra wait for receipts once every lag is 0 */

typedef struct live_conn {
    struct evhttp_connection *evcon;
    int64_t sent;              /* when the request in flight was made */
    uint64_t first, n;         /* its events: numbers first .. first + n - 1 */
    evutil_socket_t nodelay;   /* the socket TCP_NODELAY was set on, or -1 */
    bool busy;
} live_conn;

typedef struct live_probe {
    int64_t pubns;             /* CLOCK_REALTIME ns when its request was made */
    bool accepted;             /* its request was answered 201 */
} live_probe;

/* Per-thread CPU seconds of a process, by thread id. */
typedef struct thread_cpu {
    long tid;
    double cpu0, cpu1;         /* at the start and end of the span; -1 = not seen then */
    char name[16];             /* the thread's name (/proc/PID/task/TID/comm) */
} thread_cpu;

static struct live {
    /* publisher */
    live_conn conns[LIVE_CONNS_MAX];
    unsigned nconns;
    uint64_t rate;             /* events/s offered */
    uint64_t every;            /* event k is a probe when k % every == 0 */
    int64_t t0, win0, win1;    /* publishing started; the measured span [win0, win1) */
    uint64_t sent, ok;         /* events sent, accepted */
    uint64_t measured;         /* events sent inside the span */
    unsigned busy;
    bool stopped;
    samples pub_lat;           /* requests made inside the span: send to 201 */
    live_probe *probes;        /* by probe number k / every */
    size_t nprobes, cap;
    uint64_t accepted_probes;
    /* subscriptions and their receipts */
    int nsubs;
    char subs[LIVE_SUBS_MAX][64];
    seqset got[LIVE_SUBS_MAX]; /* receipts by probe number */
    uint64_t receipts;         /* distinct receipts, all subscriptions */
    uint64_t strays;           /* receipts of other subscriptions (ignored) */
    samples lat;               /* receipts of probes sent inside the span */
    samples st_append;         /* their stages: publish -> the append ran (recordedtime), */
    samples st_handler;        /* -> the handler ran (the receipt's recordedtime), */
    samples st_received;       /* -> the receipt arrived (its commit, sync and SSE) */
    int64_t bound_min;         /* the least lower bound added for a missing receipt; 0 = none */
    /* engine threads */
    thread_cpu thr[LIVE_MAX_THREADS];
    size_t nthr;
} lv;

static void live_fill(void);

static void on_live_answer(struct evhttp_request *req, void *arg)
{
    live_conn *lc = arg;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    lc->busy = false;
    lv.busy--;
    if (code == 201) {
        lv.ok += lc->n;
        for (uint64_t k = lc->first + (lv.every - lc->first % lv.every) % lv.every;
             k < lc->first + lc->n; k += lv.every) {
            lv.probes[k / lv.every].accepted = true;
            lv.accepted_probes++;
        }
        if (lc->sent >= lv.win0) {
            samples_add(&lv.pub_lat, rt_ns() - lc->sent);
        }
    } else {
        char *b = body_of(req);
        fail("publish: answer %d (want 201): %.200s", code, b);
        free(b);
    }
    live_fill();
}

static uint64_t live_subjects = SUBJECTS; /* live --subjects */

/* Subjects spread over live_subjects values without a pattern that probes could follow. */
static uint64_t live_subject(uint64_t k)
{
    return ((k * UINT64_C(0x9E3779B97F4A7C15)) >> 32) % live_subjects;
}

/*
 * Sends every event due by now (event k is due at t0 + k/rate) as batches
 * on free connections. Events wait here while every connection has a
 * request in flight, and go together in the next one: the offered rate
 * holds as long as the engine answers at all. Each event carries its
 * request's send time ("pubns"); every 'every'-th also "probe": true.
 */
static void live_fill(void)
{
    if (lv.stopped) {
        return;
    }
    int64_t now = rt_ns();
    if (now >= lv.win1) {
        lv.stopped = true;
        return;
    }
    uint64_t due = (uint64_t) ((double) (now - lv.t0) * (double) lv.rate / 1e9) + 1;
    for (unsigned i = 0; i < lv.nconns && lv.sent < due; i++) {
        live_conn *lc = &lv.conns[i];
        if (lc->busy) {
            continue;
        }
        uint64_t n = due - lv.sent < LIVE_BATCH_MAX ? due - lv.sent : LIVE_BATCH_MAX;
        struct evhttp_request *req =
            new_request(on_live_answer, lc, "application/cloudevents-batch+json");
        struct evbuffer *out = evhttp_request_get_output_buffer(req);
        int64_t t = rt_ns();
        evbuffer_add(out, "[", 1);
        for (uint64_t j = 0; j < n; j++) {
            uint64_t k = lv.sent + j;
            bool probe = k % lv.every == 0;
            char f[96];
            snprintf(f, sizeof f, "\"k\":%" PRIu64 ",\"pubns\":%" PRId64 "%s", k, t,
                     probe ? ",\"probe\":true" : "");
            if (j) {
                evbuffer_add(out, ",", 1);
            }
            add_event_on(out, "live.tick", k, live_subject(k), NULL, f);
            if (probe) {
                if (lv.nprobes == lv.cap) {
                    lv.cap = lv.cap ? lv.cap * 2 : 4096;
                    lv.probes = xrealloc(lv.probes, lv.cap * sizeof *lv.probes);
                }
                lv.probes[lv.nprobes++] = (live_probe){t, false};
            }
        }
        evbuffer_add(out, "]", 1);
        lc->first = lv.sent;
        lc->n = n;
        lv.sent += n;
        if (t >= lv.win0) {
            lv.measured += n;
        }
        lc->sent = t;
        lc->busy = true;
        lv.busy++;
        make_request(lc->evcon, req, EVHTTP_REQ_POST, "/events");
        /*
         * The socket exists once the first request starts the connection,
         * and nothing is written before the loop runs again. Without
         * TCP_NODELAY a batch over 16 KiB (libevent writes that much at a
         * time) has its tail held by Nagle's algorithm until the engine's
         * delayed ACK, ~40 ms; ordinary HTTP clients set it.
         */
        evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(lc->evcon));
        if (fd >= 0 && fd != lc->nodelay) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            lc->nodelay = fd;
        }
    }
}

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ", as the engine writes times, to microseconds; -1 if not. */
static int64_t time_us(const char *s)
{
    struct tm tm = {0};
    int us = 0, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%6d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &us, &n) != 7 ||
        n != 26 || s[n] != 'Z') {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t) timegm(&tm) * 1000000 + us;
}

/* The time after 'key' ("\"name\":\"") in the receipt's text, or -1. */
static int64_t receipt_time(const sse_cli *c, const char *key)
{
    size_t kl = strlen(key);
    const char *p = memmem(c->text, c->len, key, kl);
    return p && (size_t) (c->text + c->len - (p + kl)) > 27 ? time_us(p + kl) : -1;
}

/*
 * A receipt: {"k":K,"pubns":T,"appended":A} emitted by subscription NAME
 * (its source is /moontide/subscriptions/NAME) in the transaction that
 * committed the handler's effects for event K; A is event K's
 * recordedtime, when its append ran, and the receipt's own recordedtime is
 * when the handler ran.
 */
static void live_on_receipt(sse_cli *c, uint64_t seq, int64_t pubns, int64_t now)
{
    static const char src[] = "\"source\":\"/moontide/subscriptions/";
    const char *d = memmem(c->text, c->len, "\"data\":", 7);
    const char *kp = d ? memmem(d, c->len - (size_t) (d - c->text), "\"k\":", 4) : NULL;
    const char *sp = memmem(c->text, c->len, src, sizeof src - 1);
    if (!kp || !sp) {
        fail("receipt %" PRIu64 " without k or a subscription source", seq);
        return;
    }
    sp += sizeof src - 1;
    const char *se = memchr(sp, '"', c->len - (size_t) (sp - c->text));
    int i = 0;
    while (i < lv.nsubs && !(se && strlen(lv.subs[i]) == (size_t) (se - sp) &&
                             memcmp(lv.subs[i], sp, (size_t) (se - sp)) == 0)) {
        i++;
    }
    if (i == lv.nsubs) {
        lv.strays++;
        return;
    }
    uint64_t k = strtoull(kp + 4, NULL, 10);
    if (k % lv.every != 0 || k / lv.every >= lv.nprobes) {
        fail("receipt %" PRIu64 " for event %" PRIu64 ", which is not a probe sent", seq, k);
        return;
    }
    live_probe *p = &lv.probes[k / lv.every];
    if (pubns != p->pubns) {
        fail("receipt for event %" PRIu64 " carries pubns %" PRId64 ", sent %" PRId64, k, pubns,
             p->pubns);
    }
    if (!seqset_add(&lv.got[i], k / lv.every)) {
        fail("a second receipt from %s for event %" PRIu64, lv.subs[i], k);
        return;
    }
    lv.receipts++;
    if (p->pubns >= lv.win0 && p->pubns < lv.win1) {
        samples_add(&lv.lat, now - p->pubns);
        int64_t appended = receipt_time(c, "\"appended\":\""),
                handled = receipt_time(c, "\"recordedtime\":\"");
        if (appended >= 0 && handled >= 0) {
            samples_add(&lv.st_append, appended * 1000 - p->pubns);
            samples_add(&lv.st_handler, (handled - appended) * 1000);
            samples_add(&lv.st_received, now - handled * 1000);
        }
    }
}

/* The largest lag of this run's subscriptions, from GET /subscriptions. */
static uint64_t live_lag(void)
{
    answer a;
    call(&a, EVHTTP_REQ_GET, "/subscriptions", NULL);
    json_t *arr = a.code == 200 ? json_loads(a.body, 0, NULL) : NULL;
    if (!json_is_array(arr)) {
        die("GET /subscriptions: answer %d: %.200s", a.code, a.body);
    }
    uint64_t lag = 0;
    int found = 0;
    size_t idx;
    json_t *o;
    json_array_foreach(arr, idx, o) {
        const char *name = json_string_value(json_object_get(o, "name"));
        for (int i = 0; name && i < lv.nsubs; i++) {
            if (strcmp(name, lv.subs[i]) == 0) {
                uint64_t l = (uint64_t) json_integer_value(json_object_get(o, "lag"));
                lag = l > lag ? l : lag;
                found++;
            }
        }
    }
    if (found != lv.nsubs) {
        die("GET /subscriptions lists %d of the %d subscriptions", found, lv.nsubs);
    }
    json_decref(arr);
    free(a.body);
    return lag;
}

/* Reads each thread's CPU seconds; 'end' selects the slot. */
static void threads_read(long pid, bool end)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/task", pid);
    DIR *d = opendir(dir);
    if (!d) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        long tid = strtol(e->d_name, NULL, 10);
        if (tid <= 0) {
            continue;
        }
        char path[128], buf[1024];
        snprintf(path, sizeof path, "/proc/%ld/task/%ld/stat", pid, tid);
        FILE *f = fopen(path, "r");
        if (!f) {
            continue;
        }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')');
        unsigned long long ut, st;
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                         &st) != 2) {
            continue;
        }
        double s = (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
        size_t i = 0;
        while (i < lv.nthr && lv.thr[i].tid != tid) {
            i++;
        }
        if (i == lv.nthr) {
            if (lv.nthr == LIVE_MAX_THREADS) {
                continue;
            }
            lv.thr[lv.nthr++] = (thread_cpu){tid, -1, -1, ""};
            snprintf(path, sizeof path, "/proc/%ld/task/%ld/comm", pid, tid);
            f = fopen(path, "r");
            if (f) {
                if (fgets(lv.thr[i].name, sizeof lv.thr[i].name, f)) {
                    lv.thr[i].name[strcspn(lv.thr[i].name, "\n")] = '\0';
                }
                fclose(f);
            }
        }
        if (end) {
            lv.thr[i].cpu1 = s;
        } else {
            lv.thr[i].cpu0 = s;
        }
    }
    closedir(d);
}

static int cmp_thread(const void *a, const void *b)
{
    long x = ((const thread_cpu *) a)->tid, y = ((const thread_cpu *) b)->tid;
    return x < y ? -1 : x > y;
}

/*
 * "loop 45 ckpt 2 sync 9 writer 80 w 30 31": each engine thread's CPU over
 * the span in percent of one core, told apart by the names the engine gives
 * them (the main thread runs the loop; 'w' are a subscription's workers).
 */
static void threads_format(char *out, size_t outlen, long pid, double secs)
{
    static const char *const labels[][2] = {
        {"checkpoint", "ckpt "}, {"sync", "sync "}, {"writer", "writer "}, {"worker", "w "},
        {"watchdog", "watchdog "},
    };
    qsort(lv.thr, lv.nthr, sizeof lv.thr[0], cmp_thread);
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < lv.nthr && off < outlen; i++) {
        const thread_cpu *t = &lv.thr[i];
        if (t->cpu1 < 0) {
            continue; /* ended inside the span */
        }
        double pct = 100 * (t->cpu1 - (t->cpu0 < 0 ? 0 : t->cpu0)) / secs;
        const char *label = t->tid == pid ? "loop " : "";
        for (size_t k = 0; !*label && k < sizeof labels / sizeof labels[0]; k++) {
            if (strcmp(t->name, labels[k][0]) == 0) {
                label = labels[k][1];
            }
        }
        off += (size_t) snprintf(out + off, outlen - off, "%s%s%.0f", off ? " " : "", label, pct);
    }
}

static void print_live_header(void)
{
    printf("%-16s %6s %6s %4s %6s %8s %10s %10s %10s %7s %-6s %7s %7s %4s %4s %3s  %s\n", "case",
           "rate", "pub/s", "subs", "probes", "receipts", "p50_ms", "p99_ms", "max_ms",
           "lag_end", "kept", "pub_p50", "pub_p99", "eng%", "tool", "err",
           "threads% (loop ckpt sync writer workers)");
}

/* A percentile, '>' in front when it is a lower bound (a receipt that never came). */
static void fmt_pct(char *out, size_t outlen, const samples *s, double p)
{
    if (!s->n) {
        snprintf(out, outlen, "-");
        return;
    }
    double v = pct_ms(s, p);
    bool bound = lv.bound_min && v * 1e6 >= (double) lv.bound_min;
    snprintf(out, outlen, "%s%.3f", bound ? ">" : "", v);
}

static int cmd_live(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},     {"rate", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 's'}, {"warmup", required_argument, NULL, 'w'},
        {"handler", required_argument, NULL, 'H'}, {"subs", required_argument, NULL, 'n'},
        {"workers", required_argument, NULL, 'W'}, {"conns", required_argument, NULL, 'c'},
        {"every", required_argument, NULL, 'e'},   {"drain", required_argument, NULL, 'd'},
        {"engine-pid", required_argument, NULL, 'p'}, {"name", required_argument, NULL, 'N'},
        {"no-stream", no_argument, NULL, 'S'},     {"subjects", required_argument, NULL, 'j'},
        {"random-ids", no_argument, NULL, 'I'},    {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *handler = NULL;
    bool stream = true;
    uint64_t secs = 8, warmup = 1, drain = 10, workers = 1;
    lv.rate = 1000;
    lv.every = 100;
    lv.nsubs = 1;
    lv.nconns = 4;
    row_name = "live";
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'r': lv.rate = parse_u64("rate", optarg, 1, 1000000); break;
        case 's': secs = parse_u64("seconds", optarg, 1, 3600); break;
        case 'w': warmup = parse_u64("warmup", optarg, 0, 600); break;
        case 'H': handler = optarg; break;
        case 'n': lv.nsubs = (int) parse_u64("subs", optarg, 0, LIVE_SUBS_MAX); break;
        case 'W': workers = parse_u64("workers", optarg, 1, 64); break;
        case 'c': lv.nconns = (unsigned) parse_u64("conns", optarg, 1, LIVE_CONNS_MAX); break;
        case 'e': lv.every = parse_u64("every", optarg, 1, 1000000); break;
        case 'd': drain = parse_u64("drain", optarg, 1, 3600); break;
        case 'p': engine_pid = (long) parse_u64("engine-pid", optarg, 1, INT32_MAX); break;
        case 'N': row_name = optarg; break;
        case 'S': stream = false; break;
        case 'j': live_subjects = parse_u64("subjects", optarg, 1, UINT32_MAX); break;
        case 'I': random_ids = true; break;
        default: die("usage: mt_delivery live --url BASE --handler PATH [--subs N] [--workers W] "
                     "[--rate R] [--seconds S] [--warmup S] [--conns C] [--every N] "
                     "[--drain S] [--no-stream] [--subjects N] [--random-ids] "
                     "[--engine-pid PID] [--name NAME]");
        }
    }
    if (!stream && lv.nsubs) {
        die("live: --no-stream goes with --subs 0 (receipts are read on the stream)");
    }
    if (lv.nsubs && (!handler || strchr(handler, '"') || strchr(handler, '\\'))) {
        die("live: --handler is required (a path without quotes or backslashes)");
    }
    if (strlen(row_name) > 40 || strspn(row_name, "abcdefghijklmnopqrstuvwxyz"
                                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") !=
                                     strlen(row_name)) {
        die("live: --name must be 1 to 40 letters, digits, '_', '-' or '.'");
    }
    raise_nofile(LIVE_CONNS_MAX + 64);
    setup(url);
    init_run_id();

    /* The receipts' stream first, then the subscriptions, from the log's end. */
    sse_cli rc = {0};
    if (stream) {
        sse_open_all(&rc, 1, "receipt.%23", "\"pubns\":", live_on_receipt);
    }
    for (int i = 0; i < lv.nsubs; i++) {
        char def[1024];
        snprintf(lv.subs[i], sizeof lv.subs[i], "%s-%d", row_name, i);
        int n = snprintf(def, sizeof def,
                         "{\"topics\": [\"live.#\"], \"handler\": \"%s\", \"start\": \"end\"",
                         handler);
        if (workers > 1) {
            n += snprintf(def + n, sizeof def - (size_t) n, ", \"workers\": %" PRIu64, workers);
        }
        snprintf(def + n, sizeof def - (size_t) n, "}");
        sub_create(lv.subs[i], def);
    }
    for (unsigned i = 0; i < lv.nconns; i++) {
        lv.conns[i].evcon = connect_engine();
        lv.conns[i].nodelay = -1;
    }

    lv.t0 = rt_ns();
    lv.win0 = lv.t0 + (int64_t) warmup * 1000000000;
    lv.win1 = lv.win0 + (int64_t) secs * 1000000000;
    on_tick = live_fill;
    cpu_span cpu = {.pid = engine_pid};
    bool started = false;
    int64_t span0 = 0;
    while (rt_ns() < lv.win1) {
        if (!started && rt_ns() >= lv.win0) {
            cpu_begin(&cpu);
            span0 = rt_ns();
            if (engine_pid > 0) {
                threads_read(engine_pid, false);
            }
            started = true;
        }
        event_base_loop(base, EVLOOP_ONCE);
    }
    cpu_end(&cpu);
    double span_s = (double) (rt_ns() - span0) / 1e9;
    if (engine_pid > 0) {
        threads_read(engine_pid, true);
    }
    lv.stopped = true;
    on_tick = NULL;
    uint64_t lag_end = live_lag();

    /* Every accepted probe must come back from every subscription, once. */
    int64_t deadline = rt_ns() + (int64_t) drain * 1000000000;
    bool complete = false;
    while (rt_ns() < deadline &&
           !(complete = lv.busy == 0 && lv.receipts == lv.accepted_probes * (uint64_t) lv.nsubs)) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    int64_t cutoff = rt_ns();
    uint64_t lag_now = complete ? 0 : live_lag();
    if (!complete && lag_now == 0) {
        /* Caught up by now: what is still missing must arrive, or it is lost. */
        deadline = rt_ns() + LIVE_CAUGHT_UP_S * (int64_t) 1000000000;
        while (rt_ns() < deadline && !(complete = lv.busy == 0 &&
                                       lv.receipts == lv.accepted_probes * (uint64_t) lv.nsubs)) {
            event_base_loop(base, EVLOOP_ONCE);
        }
        cutoff = rt_ns();
        if (!complete) {
            fail("%" PRIu64 " of %" PRIu64 " receipts missing though every subscription "
                 "caught up",
                 lv.accepted_probes * (uint64_t) lv.nsubs - lv.receipts,
                 lv.accepted_probes * (uint64_t) lv.nsubs);
        }
    }
    if (lv.busy) {
        fail("publish: %u requests unanswered %" PRIu64 " s after publishing stopped", lv.busy,
             drain);
    }
    /* A receipt that did not come is at least as late as the cutoff. */
    uint64_t missing = 0, in_span = 0;
    for (size_t k = 0; k < lv.nprobes; k++) {
        in_span += lv.probes[k].accepted && lv.probes[k].pubns >= lv.win0 &&
                   lv.probes[k].pubns < lv.win1;
    }
    for (int i = 0; i < lv.nsubs && !complete; i++) {
        for (size_t k = 0; k < lv.nprobes; k++) {
            const live_probe *p = &lv.probes[k];
            if (p->accepted && p->pubns >= lv.win0 && p->pubns < lv.win1 &&
                (k >= lv.got[i].cap || !lv.got[i].seen[k])) {
                int64_t bound = cutoff - p->pubns;
                samples_add(&lv.lat, bound);
                lv.bound_min = lv.bound_min && lv.bound_min < bound ? lv.bound_min : bound;
                missing++;
            }
        }
    }
    uint64_t handled = 0;
    for (int i = 0; i < lv.nsubs; i++) {
        handled += handled_of(lv.subs[i]);
        sub_delete(lv.subs[i]);
    }
    double pub_rate = (double) lv.measured / (double) secs;
    /* Kept up: the offered rate went out, and at the end of the span no subscription
     * was more than 100 ms of events behind; every receipt came within the drain. */
    bool kept = complete && pub_rate >= 0.95 * (double) lv.rate &&
                lag_end <= lv.rate / 10 + (uint64_t) lv.nsubs;
    fprintf(stderr,
            "mt_delivery live %s: %" PRIu64 " events sent (%" PRIu64 " accepted), %zu probes, "
            "%" PRIu64 " receipts, %" PRIu64 " missing at the cutoff (%.1f s after the span), "
            "lag %" PRIu64 " at the end of the span and %" PRIu64 " at the cutoff; %" PRIu64
            " handled in all; %zu publish requests in the span",
            row_name, lv.sent, lv.ok, lv.nprobes, lv.receipts, missing,
            (double) (cutoff - lv.win1) / 1e9, lag_end, lag_now, handled, lv.pub_lat.n);
    if (lv.strays) {
        fprintf(stderr, "; %" PRIu64 " receipts of other subscriptions ignored", lv.strays);
    }
    fputc('\n', stderr);

    qsort(lv.lat.v, lv.lat.n, sizeof *lv.lat.v, cmp_i64);
    qsort(lv.pub_lat.v, lv.pub_lat.n, sizeof *lv.pub_lat.v, cmp_i64);
    samples *stages[] = {&lv.st_append, &lv.st_handler, &lv.st_received};
    if (lv.st_append.n) {
        fprintf(stderr, "mt_delivery live %s: the %zu receipts in the span by stage, "
                        "p50/p99/max ms:", row_name, lv.st_append.n);
        const char *names[] = {"publish->append", "append->handler", "handler->received"};
        for (int i = 0; i < 3; i++) {
            qsort(stages[i]->v, stages[i]->n, sizeof *stages[i]->v, cmp_i64);
            fprintf(stderr, "%s %s %.2f/%.2f/%.2f", i ? "," : "", names[i],
                    pct_ms(stages[i], 50), pct_ms(stages[i], 99), pct_ms(stages[i], 100));
        }
        fputc('\n', stderr);
    }
    char p50[32], p99[32], mx[32], ec[16] = "-", tc[16] = "-", thr[256] = "-";
    char pp50[32] = "-", pp99[32] = "-";
    if (lv.pub_lat.n) {
        snprintf(pp50, sizeof pp50, "%.1f", pct_ms(&lv.pub_lat, 50));
        snprintf(pp99, sizeof pp99, "%.1f", pct_ms(&lv.pub_lat, 99));
    }
    fmt_pct(p50, sizeof p50, &lv.lat, 50);
    fmt_pct(p99, sizeof p99, &lv.lat, 99);
    fmt_pct(mx, sizeof mx, &lv.lat, 100);
    if (cpu.engine_pct >= 0) {
        snprintf(ec, sizeof ec, "%.0f", cpu.engine_pct);
    }
    if (cpu.self_pct >= 0) {
        snprintf(tc, sizeof tc, "%.0f", cpu.self_pct);
    }
    if (engine_pid > 0) {
        threads_format(thr, sizeof thr, engine_pid, span_s);
    }
    printf("%-16s %6" PRIu64 " %6.0f %4d %6" PRIu64 " %8" PRIu64 " %10s %10s %10s %7" PRIu64
           " %-6s %7s %7s %4s %4s %3" PRIu64 "  %s\n",
           row_name, lv.rate, pub_rate, lv.nsubs, in_span, (uint64_t) lv.lat.n - missing,
           p50, p99, mx, lag_end, kept ? "yes" : "BEHIND", pp50, pp99, ec, tc, errors, thr);
    fflush(stdout);
    errors_banner(row_name);
    if (stream) {
        sse_close_all(&rc, 1);
    }
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        die("usage: mt_delivery header|sse|pull|webhook|sched|live-header|live [OPTIONS] "
            "(see the top of bench/mt_delivery.c)");
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "header") == 0) {
        print_header();
        return 0;
    }
    if (strcmp(cmd, "sse") == 0) {
        return cmd_sse(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "pull") == 0) {
        return cmd_pull(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "webhook") == 0) {
        return cmd_webhook(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "sched") == 0) {
        return cmd_sched(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "live-header") == 0) {
        print_live_header();
        return 0;
    }
    if (strcmp(cmd, "live") == 0) {
        return cmd_live(argc - 1, argv + 1);
    }
    die("unknown command '%s'", cmd);
}

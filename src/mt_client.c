#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <jansson.h>
#include "mt_client.h"
#include "mt_mem.h"
#include "mt_util.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define PAGE_LIMIT 1000   /* events asked for per read or tail request */
#define TAIL_WAIT "30s"   /* how long the engine may hold a tail poll */
#define TIMEOUT_S 90      /* per request; above TAIL_WAIT so a held poll is not cut short */

#define CT_EVENT "application/cloudevents+json"
#define CT_BATCH "application/cloudevents-batch+json"

/* Returned by the option parsers when the command should go on. */
#define PARSED (-1)

/*
 * Flags for validating JSON from outside and parsing event arrays: integers
 * become reals so that values jansson cannot hold (beyond int64) do not make
 * valid JSON look invalid; the engine, not the CLI, decides what it accepts.
 */
#define LOOSE_JSON (JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL)

/* ---- the connection ---- */

typedef struct client {
    const char *url;                /* --url as given, for messages */
    char *host;                     /* to connect to: no IPv6 brackets */
    char *host_header;              /* Host: value, "host:port" */
    char *prefix;                   /* path of --url without trailing '/'; "" if none */
    int port;                       /* 80 if --url names none */
    struct event_base *base;
    struct evhttp_connection *conn; /* one for every request: keep-alive */
    struct event *sig[2];           /* SIGINT, SIGTERM; tail only */
    bool stop;                      /* a signal asked us to stop */
} client;

typedef struct request {
    enum evhttp_cmd_type method;
    const char *path;             /* below the --url prefix, query included, percent-encoded */
    const char *content_type;     /* NULL: no body */
    const char *body;
    size_t len;
    const char *expected_version; /* NULL: no moontide-expected-version header */
} request;

typedef struct reply {
    int status;         /* HTTP status; 0 = no answer */
    mt_buf body;        /* NUL-terminated once the answer is complete */
    char reason[160];   /* why no answer came (status 0), else the status line's text */
    bool done;          /* the request callback has run */
    int64_t started_us; /* mt_mono_us() when the request was made */
} reply;

static void reply_init(reply *r)
{
    memset(r, 0, sizeof *r);
    mt_buf_init(&r->body);
}

static void reply_free(reply *r)
{
    mt_buf_free(&r->body);
}

static void client_close(client *c)
{
    for (int i = 0; i < 2; i++) {
        if (c->sig[i]) {
            event_free(c->sig[i]);
        }
    }
    if (c->conn) {
        evhttp_connection_free(c->conn);
    }
    if (c->base) {
        event_base_free(c->base);
    }
    free(c->host);
    free(c->host_header);
    free(c->prefix);
    memset(c, 0, sizeof *c);
}

/*
 * Splits 'url' into c's fields. Prints the problem and returns false unless
 * it is http://HOST[:PORT][/PATH]; a PATH prefixes every request's path.
 */
static bool parse_url(client *c, const char *url)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    if (!scheme || strcasecmp(scheme, "http") != 0 || !host || !*host) {
        const char *env = getenv("MOONTIDE_URL");
        fprintf(stderr, "moontide: invalid %s '%s': expected http://HOST[:PORT]\n",
                env && strcmp(env, url) == 0 ? "$MOONTIDE_URL" : "--url", url);
        if (u) {
            evhttp_uri_free(u);
        }
        return false;
    }
    int port = evhttp_uri_get_port(u);
    if (port < 0) {
        port = 80;
    }
    size_t hlen = strlen(host);
    if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']') {
        c->host = mt_xstrndup(host + 1, hlen - 2);
    } else {
        c->host = mt_xstrdup(host);
    }
    c->port = port;
    c->host_header = mt_xasprintf("%s:%d", host, port);
    const char *path = evhttp_uri_get_path(u);
    size_t plen = path ? strlen(path) : 0;
    while (plen > 0 && path[plen - 1] == '/') {
        plen--;
    }
    c->prefix = mt_xstrndup(plen ? path : "", plen);
    evhttp_uri_free(u);
    return true;
}

/*
 * Sets up c for 'url'. Returns MT_EXIT_OK, or prints the problem and returns
 * MT_EXIT_USAGE (bad URL) or MT_EXIT_SOFTWARE. client_close(c) is safe either way.
 */
static int client_open(client *c, const char *url)
{
    memset(c, 0, sizeof *c);
    c->url = url;
    if (!parse_url(c, url)) {
        return MT_EXIT_USAGE;
    }
    c->base = event_base_new();
    if (c->base) {
        /* No DNS base: names resolve with a blocking getaddrinfo, fine for a CLI. */
        c->conn = evhttp_connection_base_new(c->base, NULL, c->host, (ev_uint16_t) c->port);
    }
    if (!c->conn) {
        fprintf(stderr, "moontide: cannot set up an HTTP connection\n");
        return MT_EXIT_SOFTWARE;
    }
    evhttp_connection_set_timeout(c->conn, TIMEOUT_S);
    evhttp_connection_set_retries(c->conn, 0);
    return MT_EXIT_OK;
}

/*
 * errno is only meaningful here when it names a socket failure: libevent
 * reports an orderly close as EOF with whatever errno was left behind.
 */
static const char *socket_reason(int e, const char *fallback)
{
    switch (e) {
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EPIPE:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case EHOSTDOWN:
    case ENETUNREACH:
    case ENETDOWN:
    case EADDRNOTAVAIL:
        return strerror(e);
    default:
        return fallback;
    }
}

static void on_request_error(enum evhttp_request_error err, void *arg)
{
    reply *r = arg;
    const char *what = "request failed";
    switch (err) {
    case EVREQ_HTTP_TIMEOUT:
        what = "timed out";
        break;
    case EVREQ_HTTP_EOF:
    case EVREQ_HTTP_BUFFER_ERROR:
        what = socket_reason(errno, "connection closed");
        break;
    case EVREQ_HTTP_INVALID_HEADER:
        what = "invalid HTTP answer";
        break;
    case EVREQ_HTTP_REQUEST_CANCEL:
        what = "cancelled";
        break;
    case EVREQ_HTTP_DATA_TOO_LONG:
        what = "answer too large";
        break;
    }
    snprintf(r->reason, sizeof r->reason, "%s", what);
}

static void on_request_done(struct evhttp_request *req, void *arg)
{
    reply *r = arg;
    r->done = true;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code > 0) {
        r->status = code;
        const char *line = evhttp_request_get_response_code_line(req);
        snprintf(r->reason, sizeof r->reason, "%s", line ? line : "");
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        mt_buf_reserve(&r->body, n + 1);
        evbuffer_remove(in, r->body.data + r->body.len, n);
        r->body.len += n;
        mt_buf_cstr(&r->body);
    } else if (!r->reason[0]) {
        /*
         * libevent 2.1 calls back without the error callback only when the
         * connect was refused or timed out, and by then closing the socket has
         * overwritten errno.
         */
        bool timed_out = mt_mono_us() - r->started_us >= (int64_t) TIMEOUT_S * 1000000;
        snprintf(r->reason, sizeof r->reason, "%s",
                 timed_out ? "timed out" : strerror(ECONNREFUSED));
    }
}

/*
 * Name-resolution failures never reach errno: libevent keeps them on the
 * connection's bufferevent. Returns NULL if there is none.
 */
static const char *dns_error(client *c)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
    int e = bev ? bufferevent_socket_get_dns_error(bev) : 0;
    return e ? evutil_gai_strerror(e) : NULL;
}

/*
 * Sends 'q' on c's connection and runs c's event base until the answer is
 * complete. Fills *r (reset first). Returns MT_OK when an answer came, whatever
 * its status; MT_EUNAVAIL when none did (r->reason says why); MT_ECLOSED if a
 * signal stopped the wait (the request is cancelled).
 */
static mt_err client_request(client *c, const request *q, reply *r)
{
    r->status = 0;
    r->body.len = 0;
    r->reason[0] = '\0';
    r->done = false;
    r->started_us = mt_mono_us();

    /*
     * A write on a socket the engine has closed raises SIGPIPE; ignore it while
     * we talk (libevent reports the error instead), and restore it before
     * returning so a closed stdout still ends the process the usual way.
     */
    struct sigaction ign, old;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old);

    /*
     * Let an idle keep-alive connection notice that the engine closed it while
     * we were away (reading stdin), so this request opens a fresh connection
     * instead of failing on a stale socket.
     */
    event_base_loop(c->base, EVLOOP_NONBLOCK);

    struct evhttp_request *req = evhttp_request_new(on_request_done, r);
    mt_assert(req != NULL);
    evhttp_request_set_error_cb(req, on_request_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", c->host_header);
    evhttp_add_header(h, "Accept", "application/json");
    if (q->content_type) {
        evhttp_add_header(h, "Content-Type", q->content_type);
        evbuffer_add(evhttp_request_get_output_buffer(req), q->body, q->len);
    }
    if (q->expected_version) {
        evhttp_add_header(h, "moontide-expected-version", q->expected_version);
    }
    char *uri = mt_xasprintf("%s%s", c->prefix, q->path);
    int sent = evhttp_make_request(c->conn, req, q->method, uri);
    free(uri);
    mt_err rc = MT_OK;
    if (sent != 0) {
        /* Only an allocation failure gets here (no local address is bound); libevent freed req. */
        snprintf(r->reason, sizeof r->reason, "cannot send the request");
        rc = MT_EUNAVAIL;
        goto out;
    }
    while (!r->done && !c->stop) {
        if (event_base_loop(c->base, EVLOOP_ONCE) != 0) {
            break;
        }
    }
    if (!r->done) {
        /* Cancelling runs on_request_error, never on_request_done, and frees req. */
        evhttp_cancel_request(req);
        if (!c->stop) {
            snprintf(r->reason, sizeof r->reason, "event loop stopped");
        }
        rc = c->stop ? MT_ECLOSED : MT_EUNAVAIL;
        goto out;
    }
    if (r->status == 0) {
        const char *dns = dns_error(c);
        if (dns) {
            snprintf(r->reason, sizeof r->reason, "%s", dns);
        }
        rc = MT_EUNAVAIL;
    }
out:
    sigaction(SIGPIPE, &old, NULL);
    return rc;
}

/* ---- reporting ---- */

static int report_unreachable(const client *c, const reply *r)
{
    fprintf(stderr, "moontide: cannot reach engine at %s: %s\n", c->url, r->reason);
    return MT_EXIT_UNAVAILABLE;
}

static int exit_code_for_status(int status)
{
    switch (status) {
    case 400:
    case 404:
    case 409:
    case 413:
    case 415:
        return MT_EXIT_DATAERR;
    case 503:
    case 507:
        return MT_EXIT_UNAVAILABLE;
    default:
        return MT_EXIT_SOFTWARE;
    }
}

/*
 * Prints `moontide: STATUS ERROR: DETAIL` from the engine's JSON error body
 * (else the status line and the body's first line) and returns the exit code
 * for STATUS.
 */
static int report_http_error(reply *r)
{
    json_t *doc = json_loadb(mt_buf_cstr(&r->body), r->body.len, 0, NULL);
    const char *error = json_string_value(json_object_get(doc, "error"));
    const char *detail = json_string_value(json_object_get(doc, "detail"));
    if (!error) {
        /* Not moontide's JSON (a proxy, libevent's HTML page): keep a plain-text first line. */
        error = r->reason[0] ? r->reason : "error";
        detail = r->body.len && r->body.data[0] != '<' ? r->body.data : NULL;
    }
    if (detail && *detail) {
        int n = (int) strcspn(detail, "\r\n");
        fprintf(stderr, "moontide: %d %s: %.*s\n", r->status, error, n, detail);
    } else {
        fprintf(stderr, "moontide: %d %s\n", r->status, error);
    }
    json_decref(doc);
    return exit_code_for_status(r->status);
}

static int report_unexpected(reply *r, const char *what)
{
    fprintf(stderr, "moontide: unexpected answer from engine (HTTP %d): %s\n", r->status, what);
    return MT_EXIT_SOFTWARE;
}

/* Flushes stdout. Returns MT_EXIT_OK, or reports the failure and returns MT_EXIT_SOFTWARE. */
static int flush_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "moontide: cannot write to stdout: %s\n", strerror(errno));
        return MT_EXIT_SOFTWARE;
    }
    return MT_EXIT_OK;
}

/*
 * Appends each element of the JSON array 'text' to 'out' as one line, dropping
 * the whitespace between tokens. 'text' must already be valid JSON (checked by
 * jansson): this only finds element boundaries. Working on the bytes rather
 * than re-encoding keeps event data exactly as the engine stored it; jansson
 * would turn 1.10 into 1.1 and cannot hold integers beyond int64.
 */
static void split_array_lines(const char *text, size_t len, mt_buf *out)
{
    int depth = 0;
    bool in_string = false;
    bool escaped = false;
    bool pending = false; /* an element has been started and not yet ended */
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (in_string) {
            mt_buf_add(out, &ch, 1);
            if (escaped) {
                escaped = false;
            } else if (ch == '\\') {
                escaped = true;
            } else if (ch == '"') {
                in_string = false;
            }
            continue;
        }
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            continue;
        }
        if (ch == '[' || ch == '{') {
            if (depth++ == 0) {
                continue; /* the outer array */
            }
        } else if (ch == ']' || ch == '}') {
            if (--depth == 0) {
                break;
            }
        } else if (ch == ',' && depth == 1) {
            mt_buf_adds(out, "\n");
            pending = false;
            continue;
        } else if (ch == '"') {
            in_string = true;
        }
        mt_buf_add(out, &ch, 1);
        pending = true;
    }
    if (pending) {
        mt_buf_adds(out, "\n");
    }
}

/*
 * Prints the events of a 200 answer holding a JSON array, one compact line
 * each, and flushes stdout. Sets *count, and *last_seq to the last event's
 * "sequence" (unchanged if there are no events). Returns an exit code.
 */
static int print_events(reply *r, size_t *count, uint64_t *last_seq)
{
    *count = 0;
    json_error_t err;
    json_t *arr = json_loadb(mt_buf_cstr(&r->body), r->body.len, LOOSE_JSON, &err);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return report_unexpected(r, arr ? "not a JSON array" : err.text);
    }
    size_t n = json_array_size(arr);
    if (n > 0) {
        json_t *last = json_array_get(arr, n - 1);
        const char *seq = json_string_value(json_object_get(last, "sequence"));
        if (!seq || mt_parse_u64(seq, last_seq) != MT_OK) {
            json_decref(arr);
            return report_unexpected(r, "event without a valid \"sequence\"");
        }
    }
    json_decref(arr);
    mt_buf lines;
    mt_buf_init(&lines);
    split_array_lines(r->body.data, r->body.len, &lines);
    fwrite(lines.data ? lines.data : "", 1, lines.len, stdout);
    mt_buf_free(&lines);
    *count = n;
    return flush_stdout();
}

/* ---- options ---- */

enum {
    OPT_URL = 256,
    OPT_TYPE,
    OPT_SOURCE,
    OPT_ID,
    OPT_SUBJECT,
    OPT_DATA,
    OPT_DATACONTENTTYPE,
    OPT_TIME,
    OPT_EXPECTED_VERSION,
    OPT_FILE,
    OPT_STREAM,
    OPT_AFTER,
    OPT_FROM,
    OPT_LIMIT
};

static const char *default_url(void)
{
    const char *u = getenv("MOONTIDE_URL");
    return u && *u ? u : DEFAULT_URL;
}

/* Prints 'usage' to stdout for --help (exit 0) or to stderr after a mistake (exit 64). */
static int usage(const char *text, bool asked)
{
    fputs(text, asked ? stdout : stderr);
    return asked ? MT_EXIT_OK : MT_EXIT_USAGE;
}

static int usage_error(const char *text, const char *problem)
{
    fprintf(stderr, "moontide: %s\n", problem);
    return usage(text, false);
}

/* Parses a whole unsigned number for 'flag'. Prints the problem and returns false if bad. */
static bool parse_number(const char *flag, const char *s, uint64_t *out)
{
    if (mt_parse_u64(s, out) != MT_OK) {
        fprintf(stderr, "moontide: %s wants a whole number, not '%s'\n", flag, s);
        return false;
    }
    return true;
}

static bool expected_version_ok(const char *v)
{
    uint64_t n;
    return strcmp(v, "any") == 0 || strcmp(v, "no_stream") == 0 || strcmp(v, "exists") == 0
        || mt_parse_u64(v, &n) == MT_OK;
}

/* ---- publish ---- */

static const char publish_usage[] =
    "usage: moontide publish [--url URL] --type T --source S [--id ID] [--subject X]\n"
    "                        [--data JSON] [--datacontenttype CT] [--time RFC3339]\n"
    "                        [--expected-version V]\n"
    "       moontide publish [--url URL] [--expected-version V] --file FILE\n"
    "       moontide publish [--url URL] [--expected-version V] [-]\n"
    "\n"
    "Publishes CloudEvents to a running engine: one event built from flags, the\n"
    "event or array of events (one atomic batch) in FILE, or one event object per\n"
    "line on stdin (used when no event flags are given and stdin is not a terminal).\n"
    "Prints one line per event: {\"id\":...,\"sequence\":...,\"streamversion\":...},\n"
    "with \"duplicate\":true if the engine already had the event.\n"
    "\n"
    "  --url URL               engine (default $MOONTIDE_URL, else " DEFAULT_URL ")\n"
    "  --type T                event type, e.g. order.placed (required with flags)\n"
    "  --source S              event source, e.g. /shop (required with flags)\n"
    "  --id ID                 event id (default: a random UUID)\n"
    "  --subject X             the stream the event belongs to\n"
    "  --data JSON             event data as JSON text, sent byte for byte\n"
    "  --datacontenttype CT    content type of the data\n"
    "  --time RFC3339          when the event happened\n"
    "  --expected-version V    any, no_stream, exists or the stream's last version N\n"
    "  --file FILE             publish the JSON event or array of events in FILE\n"
    "  -                       publish JSON lines from stdin, one request per line\n"
    "  --help                  show this help\n";

typedef struct publish_opts {
    const char *url;
    const char *type;
    const char *source;
    const char *id;
    const char *subject;
    const char *data;
    const char *datacontenttype;
    const char *time;
    const char *expected_version;
    const char *file;
    bool from_stdin;
} publish_opts;

static int parse_publish(int argc, char **argv, publish_opts *o)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"type", required_argument, NULL, OPT_TYPE},
        {"source", required_argument, NULL, OPT_SOURCE},
        {"id", required_argument, NULL, OPT_ID},
        {"subject", required_argument, NULL, OPT_SUBJECT},
        {"data", required_argument, NULL, OPT_DATA},
        {"datacontenttype", required_argument, NULL, OPT_DATACONTENTTYPE},
        {"time", required_argument, NULL, OPT_TIME},
        {"expected-version", required_argument, NULL, OPT_EXPECTED_VERSION},
        {"file", required_argument, NULL, OPT_FILE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->url = default_url();
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_URL:
            o->url = optarg;
            break;
        case OPT_TYPE:
            o->type = optarg;
            break;
        case OPT_SOURCE:
            o->source = optarg;
            break;
        case OPT_ID:
            o->id = optarg;
            break;
        case OPT_SUBJECT:
            o->subject = optarg;
            break;
        case OPT_DATA:
            o->data = optarg;
            break;
        case OPT_DATACONTENTTYPE:
            o->datacontenttype = optarg;
            break;
        case OPT_TIME:
            o->time = optarg;
            break;
        case OPT_EXPECTED_VERSION:
            o->expected_version = optarg;
            break;
        case OPT_FILE:
            o->file = optarg;
            break;
        case 'h':
            return usage(publish_usage, true);
        default:
            return usage(publish_usage, false);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (strcmp(argv[i], "-") != 0) {
            return usage_error(publish_usage, "publish takes no arguments other than '-'");
        }
        o->from_stdin = true;
    }
    bool flags = o->type || o->source || o->id || o->subject || o->data || o->datacontenttype
        || o->time;
    if (o->file && (flags || o->from_stdin)) {
        return usage_error(publish_usage, "--file cannot be combined with event flags or '-'");
    }
    if (o->from_stdin && flags) {
        return usage_error(publish_usage, "'-' cannot be combined with event flags");
    }
    if (flags && (!o->type || !o->source)) {
        return usage_error(publish_usage, "--type and --source are both required");
    }
    if (!flags && !o->file && !o->from_stdin) {
        if (isatty(STDIN_FILENO)) {
            return usage_error(publish_usage, "nothing to publish");
        }
        o->from_stdin = true;
    }
    if (o->expected_version && !expected_version_ok(o->expected_version)) {
        return usage_error(publish_usage,
                           "--expected-version wants any, no_stream, exists or a number");
    }
    return PARSED;
}

/*
 * Sends one structured event or a batch and prints the engine's answer, one
 * line per event. Returns an exit code; errors are reported here.
 */
static int send_events(client *c, const char *content_type, const char *expected_version,
                       const char *body, size_t len)
{
    request q = {
        .method = EVHTTP_REQ_POST,
        .path = "/events",
        .content_type = content_type,
        .body = body,
        .len = len,
        .expected_version = expected_version,
    };
    reply r;
    reply_init(&r);
    int rc;
    if (client_request(c, &q, &r) != MT_OK) {
        rc = report_unreachable(c, &r);
    } else if (r.status >= 300) {
        rc = report_http_error(&r);
    } else {
        json_error_t err;
        json_t *doc = json_loadb(mt_buf_cstr(&r.body), r.body.len, 0, &err);
        json_t *events = json_object_get(doc, "events");
        if (!json_is_array(events)) {
            rc = report_unexpected(&r, doc ? "no \"events\" array" : err.text);
        } else {
            size_t i;
            json_t *e;
            json_array_foreach(events, i, e) {
                /* The answer holds only ids and numbers the engine made: re-encoding is exact. */
                char *line = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
                if (line) {
                    puts(line);
                    free(line);
                }
            }
            rc = flush_stdout();
        }
        json_decref(doc);
    }
    reply_free(&r);
    return rc;
}

/* Writes a random (version 4) UUID into out. Returns false if /dev/urandom fails. */
static bool make_uuid(char out[37])
{
    unsigned char b[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = read(fd, b + got, sizeof b - got);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            close(fd);
            return false;
        }
        got += (size_t) n;
    }
    close(fd);
    b[6] = (unsigned char) ((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char) ((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
             b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return true;
}

/* Sets ev[key] = val if val is given. Returns false (after reporting) if it is not UTF-8. */
static bool set_attr(json_t *ev, const char *key, const char *val, const char *flag)
{
    if (!val) {
        return true;
    }
    json_t *s = json_string(val);
    if (!s) {
        fprintf(stderr, "moontide: %s is not valid UTF-8\n", flag);
        return false;
    }
    json_object_set_new(ev, key, s);
    return true;
}

/*
 * Builds the structured event from flags. The envelope goes through jansson;
 * --data is spliced in as the user's exact text so that numbers such as 1.10
 * or 64-bit integers reach the engine unchanged. Returns an exit code.
 */
static int publish_flags(client *c, const publish_opts *o)
{
    json_error_t err;
    if (o->data) {
        json_t *d = json_loadb(o->data, strlen(o->data), LOOSE_JSON | JSON_DECODE_ANY, &err);
        if (!d) {
            fprintf(stderr, "moontide: --data is not valid JSON: %s (at character %d)\n", err.text,
                    err.position);
            return MT_EXIT_DATAERR;
        }
        json_decref(d);
    }
    int64_t us;
    if (o->time && mt_time_parse(o->time, &us) != MT_OK) {
        fprintf(stderr, "moontide: --time '%s' is not an RFC 3339 timestamp\n", o->time);
        return MT_EXIT_DATAERR;
    }
    char uuid[37];
    const char *id = o->id;
    if (!id) {
        if (!make_uuid(uuid)) {
            fprintf(stderr, "moontide: cannot read /dev/urandom for an event id\n");
            return MT_EXIT_SOFTWARE;
        }
        id = uuid;
    }
    json_t *ev = json_object();
    json_object_set_new(ev, "specversion", json_string("1.0"));
    bool ok = set_attr(ev, "id", id, "--id")
        && set_attr(ev, "source", o->source, "--source")
        && set_attr(ev, "type", o->type, "--type")
        && set_attr(ev, "subject", o->subject, "--subject")
        && set_attr(ev, "time", o->time, "--time")
        && set_attr(ev, "datacontenttype", o->datacontenttype, "--datacontenttype");
    char *envelope = ok ? json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(ev);
    if (!envelope) {
        return ok ? MT_EXIT_SOFTWARE : MT_EXIT_DATAERR;
    }
    mt_buf body;
    mt_buf_init(&body);
    mt_buf_add(&body, envelope, strlen(envelope) - 1); /* all but the closing '}' */
    if (o->data) {
        mt_buf_adds(&body, ",\"data\":");
        mt_buf_adds(&body, o->data);
    }
    mt_buf_adds(&body, "}");
    free(envelope);
    int rc = send_events(c, CT_EVENT, o->expected_version, body.data, body.len);
    mt_buf_free(&body);
    return rc;
}

/* Reads all of 'path' into a new buffer. Returns false (errno set) on failure. */
static bool slurp(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        return false;
    }
    size_t cap = 0;
    char *buf = NULL;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 65536;
            char *bigger = mt_tryrealloc(buf, cap);
            if (!bigger) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return false;
            }
            buf = bigger;
        }
        size_t n = fread(buf + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0) {
            break;
        }
    }
    bool failed = ferror(f);
    int saved = errno;
    fclose(f);
    if (failed) {
        free(buf);
        *len = 0;
        errno = saved;
        return false;
    }
    *out = buf;
    return true;
}

/* Publishes the event object or batch array in o->file, sending its bytes as they are. */
static int publish_file(client *c, const publish_opts *o)
{
    char *text;
    size_t len;
    if (!slurp(o->file, &text, &len)) {
        fprintf(stderr, "moontide: cannot read %s: %s\n", o->file, strerror(errno));
        return MT_EXIT_DATAERR;
    }
    json_error_t err;
    json_t *doc = json_loadb(text, len, LOOSE_JSON, &err);
    int rc;
    if (!doc) {
        fprintf(stderr, "moontide: %s:%d:%d: %s\n", o->file, err.line, err.column, err.text);
        rc = MT_EXIT_DATAERR;
    } else {
        const char *ct = json_is_array(doc) ? CT_BATCH : CT_EVENT;
        rc = send_events(c, ct, o->expected_version, text, len);
    }
    json_decref(doc);
    free(text);
    return rc;
}

static bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') {
            return false;
        }
    }
    return true;
}

/*
 * Publishes one event per stdin line, one request each over the one
 * keep-alive connection. Stops at the first bad line or refused event;
 * events before it stay published.
 */
static int publish_stdin(client *c, const publish_opts *o)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    int rc = MT_EXIT_OK;
    while (rc == MT_EXIT_OK && (n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        size_t len = (size_t) n;
        if (is_blank(line, len)) {
            continue;
        }
        json_error_t err;
        json_t *ev = json_loadb(line, len, LOOSE_JSON, &err);
        if (!json_is_object(ev)) {
            if (ev) {
                fprintf(stderr, "moontide: stdin:%lu: expected one event object\n", lineno);
            } else {
                fprintf(stderr, "moontide: stdin:%lu:%d: %s\n", lineno, err.column, err.text);
            }
            rc = MT_EXIT_DATAERR;
        } else {
            rc = send_events(c, CT_EVENT, o->expected_version, line, len);
            if (rc != MT_EXIT_OK) {
                fprintf(stderr, "moontide: stdin:%lu: not published%s\n", lineno,
                        lineno > 1 ? "; earlier lines were" : "");
            }
        }
        json_decref(ev);
    }
    if (rc == MT_EXIT_OK && ferror(stdin)) {
        fprintf(stderr, "moontide: cannot read stdin: %s\n", strerror(errno));
        rc = MT_EXIT_DATAERR;
    }
    free(line);
    return rc;
}

int mt_client_publish(int argc, char **argv)
{
    publish_opts o;
    int rc = parse_publish(argc, argv, &o);
    if (rc != PARSED) {
        return rc;
    }
    client c;
    rc = client_open(&c, o.url);
    if (rc == MT_EXIT_OK) {
        if (o.file) {
            rc = publish_file(&c, &o);
        } else if (o.from_stdin) {
            rc = publish_stdin(&c, &o);
        } else {
            rc = publish_flags(&c, &o);
        }
    }
    client_close(&c);
    return rc;
}

/* ---- read ---- */

static const char read_usage[] =
    "usage: moontide read [--url URL] [--after SEQ] [--limit N]\n"
    "       moontide read [--url URL] --stream SUBJECT [--from VERSION] [--limit N]\n"
    "\n"
    "Prints events from the log (those after sequence SEQ), or from one stream\n"
    "(from stream version VERSION), one compact JSON line each, in order.\n"
    "\n"
    "  --url URL          engine (default $MOONTIDE_URL, else " DEFAULT_URL ")\n"
    "  --after SEQ        start after this log sequence (default 0: the beginning)\n"
    "  --stream SUBJECT   read the stream of this subject instead of the log\n"
    "  --from VERSION     first stream version to print (default 0)\n"
    "  --limit N          print at most N events (default: all)\n"
    "  --help             show this help\n";

typedef struct read_opts {
    const char *url;
    const char *stream; /* NULL: read the log */
    uint64_t after;     /* log: print events after this sequence */
    uint64_t from;      /* stream: first version to print */
    uint64_t limit;     /* 0 = all */
} read_opts;

static int parse_read(int argc, char **argv, read_opts *o)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"stream", required_argument, NULL, OPT_STREAM},
        {"after", required_argument, NULL, OPT_AFTER},
        {"from", required_argument, NULL, OPT_FROM},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->url = default_url();
    bool after = false;
    bool from = false;
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        bool ok = true;
        switch (ch) {
        case OPT_URL:
            o->url = optarg;
            break;
        case OPT_STREAM:
            o->stream = optarg;
            break;
        case OPT_AFTER:
            ok = parse_number("--after", optarg, &o->after);
            after = true;
            break;
        case OPT_FROM:
            ok = parse_number("--from", optarg, &o->from);
            from = true;
            break;
        case OPT_LIMIT:
            ok = parse_number("--limit", optarg, &o->limit);
            if (ok && o->limit == 0) {
                return usage_error(read_usage, "--limit must be 1 or more");
            }
            break;
        case 'h':
            return usage(read_usage, true);
        default:
            return usage(read_usage, false);
        }
        if (!ok) {
            return usage(read_usage, false);
        }
    }
    if (optind < argc) {
        return usage_error(read_usage, "read takes no arguments");
    }
    if (o->stream && after) {
        return usage_error(read_usage, "--after is for the log; use --from with --stream");
    }
    if (!o->stream && from) {
        return usage_error(read_usage, "--from needs --stream");
    }
    if (o->stream && !*o->stream) {
        return usage_error(read_usage, "--stream needs a subject");
    }
    return PARSED;
}

/* Asks for one page of o's events starting at *pos (log: after; stream: from). */
static char *read_path(const read_opts *o, const char *subject_enc, uint64_t pos, uint64_t page)
{
    if (o->stream) {
        return mt_xasprintf("/streams/%s?from=%llu&limit=%llu", subject_enc,
                            (unsigned long long) pos, (unsigned long long) page);
    }
    return mt_xasprintf("/events?after=%llu&limit=%llu", (unsigned long long) pos,
                        (unsigned long long) page);
}

static int read_pages(client *c, const read_opts *o)
{
    char *subject_enc = o->stream ? evhttp_uriencode(o->stream, -1, 0) : NULL;
    uint64_t pos = o->stream ? o->from : o->after;
    uint64_t left = o->limit;
    reply r;
    reply_init(&r);
    int rc = MT_EXIT_OK;
    for (;;) {
        uint64_t page = left && left < PAGE_LIMIT ? left : PAGE_LIMIT;
        char *path = read_path(o, subject_enc, pos, page);
        request q = {.method = EVHTTP_REQ_GET, .path = path};
        mt_err err = client_request(c, &q, &r);
        free(path);
        if (err != MT_OK) {
            rc = report_unreachable(c, &r);
            break;
        }
        if (r.status == 404 && o->stream) {
            fprintf(stderr, "moontide: stream '%s' not found\n", o->stream);
            rc = MT_EXIT_DATAERR;
            break;
        }
        if (r.status != 200) {
            rc = report_http_error(&r);
            break;
        }
        size_t n;
        uint64_t last = pos;
        rc = print_events(&r, &n, &last);
        if (rc != MT_EXIT_OK || n < page) {
            break;
        }
        /* Stream versions are contiguous, so the next page starts n further on. */
        pos = o->stream ? pos + n : last;
        if (left) {
            left -= n;
            if (left == 0) {
                break;
            }
        }
    }
    reply_free(&r);
    free(subject_enc);
    return rc;
}

int mt_client_read(int argc, char **argv)
{
    read_opts o;
    int rc = parse_read(argc, argv, &o);
    if (rc != PARSED) {
        return rc;
    }
    client c;
    rc = client_open(&c, o.url);
    if (rc == MT_EXIT_OK) {
        rc = read_pages(&c, &o);
    }
    client_close(&c);
    return rc;
}

/* ---- tail ---- */

static const char tail_usage[] =
    "usage: moontide tail [--url URL] [--after SEQ]\n"
    "\n"
    "Follows the log, printing each new event as one compact JSON line as it is\n"
    "appended, until interrupted (SIGINT or SIGTERM: exit 0). Survives engine\n"
    "restarts: while the engine is away it retries every second.\n"
    "\n"
    "  --url URL     engine (default $MOONTIDE_URL, else " DEFAULT_URL ")\n"
    "  --after SEQ   start after this sequence (default: the current head, so only\n"
    "                new events; --after 0 prints the whole log, then follows)\n"
    "  --help        show this help\n";

static int parse_tail(int argc, char **argv, const char **url, bool *has_after, uint64_t *after)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"after", required_argument, NULL, OPT_AFTER},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *url = default_url();
    *has_after = false;
    *after = 0;
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_URL:
            *url = optarg;
            break;
        case OPT_AFTER:
            if (!parse_number("--after", optarg, after)) {
                return usage(tail_usage, false);
            }
            *has_after = true;
            break;
        case 'h':
            return usage(tail_usage, true);
        default:
            return usage(tail_usage, false);
        }
    }
    if (optind < argc) {
        return usage_error(tail_usage, "tail takes no arguments");
    }
    return PARSED;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void) sig;
    (void) what;
    client *c = arg;
    c->stop = true;
    event_base_loopbreak(c->base);
}

/* Routes SIGINT and SIGTERM to c->stop; libevent restores the old handlers in client_close. */
static void catch_signals(client *c)
{
    const int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        c->sig[i] = evsignal_new(c->base, sigs[i], on_signal, c);
        mt_assert(c->sig[i] != NULL);
        evsignal_add(c->sig[i], NULL);
    }
}

/* Waits 'seconds' on c's base; a signal cuts the wait short. */
static void client_sleep(client *c, int seconds)
{
    struct timeval tv = {seconds, 0};
    event_base_loopexit(c->base, &tv);
    event_base_dispatch(c->base);
}

/* Asks /healthz for the log's head. Returns an exit code (MT_EXIT_OK if a signal stopped it). */
static int fetch_head(client *c, uint64_t *head)
{
    reply r;
    reply_init(&r);
    request q = {.method = EVHTTP_REQ_GET, .path = "/healthz"};
    int rc = MT_EXIT_OK;
    mt_err err = client_request(c, &q, &r);
    if (err == MT_ECLOSED) {
        rc = MT_EXIT_OK;
    } else if (err != MT_OK) {
        rc = report_unreachable(c, &r);
    } else if (r.status != 200) {
        rc = report_http_error(&r);
    } else {
        json_t *doc = json_loadb(mt_buf_cstr(&r.body), r.body.len, 0, NULL);
        const char *s = json_string_value(json_object_get(doc, "head"));
        if (!s || mt_parse_u64(s, head) != MT_OK) {
            rc = report_unexpected(&r, "/healthz without a \"head\" sequence");
        }
        json_decref(doc);
    }
    reply_free(&r);
    return rc;
}

/*
 * The follow loop. Only the first request may fail for good: once the engine
 * has answered, losing it (no answer or 5xx, as during a restart) means
 * waiting a second and asking again from the same sequence.
 */
static int follow(client *c, uint64_t after, bool contacted)
{
    reply r;
    reply_init(&r);
    bool lost = false;
    int rc = MT_EXIT_OK;
    while (!c->stop) {
        /* Right after a loss, ask without waiting so that the engine's return shows at once. */
        char *path = mt_xasprintf("/events?after=%llu&limit=%d%s", (unsigned long long) after,
                                  PAGE_LIMIT, lost ? "" : "&wait=" TAIL_WAIT);
        request q = {.method = EVHTTP_REQ_GET, .path = path};
        mt_err err = client_request(c, &q, &r);
        free(path);
        if (err == MT_ECLOSED) {
            break;
        }
        if (err != MT_OK || r.status >= 500) {
            if (!contacted) {
                rc = err != MT_OK ? report_unreachable(c, &r) : report_http_error(&r);
                break;
            }
            if (!lost) {
                fprintf(stderr, "moontide: lost engine at %s: %s; retrying every second\n",
                        c->url, err != MT_OK ? r.reason : "engine answered an error");
                lost = true;
            }
            client_sleep(c, 1);
            continue;
        }
        if (r.status != 200) {
            rc = report_http_error(&r);
            break;
        }
        contacted = true;
        if (lost) {
            fprintf(stderr, "moontide: engine at %s is back\n", c->url);
            lost = false;
        }
        size_t n;
        rc = print_events(&r, &n, &after);
        if (rc != MT_EXIT_OK) {
            break;
        }
    }
    reply_free(&r);
    return rc;
}

int mt_client_tail(int argc, char **argv)
{
    const char *url;
    bool has_after;
    uint64_t after;
    int rc = parse_tail(argc, argv, &url, &has_after, &after);
    if (rc != PARSED) {
        return rc;
    }
    client c;
    rc = client_open(&c, url);
    if (rc == MT_EXIT_OK) {
        catch_signals(&c);
        if (!has_after) {
            rc = fetch_head(&c, &after);
        }
        if (rc == MT_EXIT_OK && !c.stop) {
            rc = follow(&c, after, !has_after);
        }
    }
    client_close(&c);
    return rc;
}

/* ---- dead letters ---- */

static const char dlq_usage[] =
    "usage: moontide dlq list|show|redrive|purge SUBSCRIPTION [SEQUENCE] [--url URL]\n"
    "\n"
    "Works with a subscription's dead-letter queue on a running engine.\n"
    "  list SUB            every dead letter, one JSON object a line\n"
    "  show SUB SEQ        the dead letter of event SEQ, with every attempt's error\n"
    "  redrive SUB [SEQ]   put dead letters (or one) back into delivery\n"
    "  purge SUB [SEQ]     delete dead letters (or one)\n"
    "  --url URL           the engine (default $MOONTIDE_URL or " DEFAULT_URL ")\n";

#define DLQ_PAGE 10000

/*
 * Prints every dead letter, a page at a time: one request stopped at the
 * first 10,000 and said nothing of the rest.
 */
static int dlq_list_all(client *c, const char *name)
{
    uint64_t after = 0;
    reply r;
    reply_init(&r);
    int rc = MT_EXIT_OK;
    for (;;) {
        char *path = mt_xasprintf("/subscriptions/%s/dlq?after=%llu&limit=%d", name,
                                  (unsigned long long) after, DLQ_PAGE);
        request q = {EVHTTP_REQ_GET, path, NULL, NULL, 0, NULL};
        mt_err err = client_request(c, &q, &r);
        free(path);
        if (err) {
            rc = report_unreachable(c, &r);
            break;
        }
        if (r.status != 200) {
            rc = report_http_error(&r);
            break;
        }
        json_t *a = json_loadb(mt_buf_cstr(&r.body), r.body.len, 0, NULL);
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e) {
            const char *sq = json_string_value(json_object_get(e, "sequence"));
            after = sq ? strtoull(sq, NULL, 10) : after;
            char *line = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
            printf("%s\n", line);
            free(line);
        }
        size_t n = json_array_size(a);
        json_decref(a);
        if (n < DLQ_PAGE) {
            rc = flush_stdout();
            break;
        }
    }
    reply_free(&r);
    return rc;
}

int mt_client_dlq(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = default_url();
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'u': url = optarg; break;
        case 'h': return usage(dlq_usage, true);
        default: return usage(dlq_usage, false);
        }
    }
    int nargs = argc - optind;
    char **args = argv + optind;
    if (nargs < 2 || nargs > 3) {
        return usage_error(dlq_usage, "expected an action and a subscription");
    }
    const char *action = args[0];
    uint64_t seq = 0;
    if (nargs == 3 && !parse_number("SEQUENCE", args[2], &seq)) {
        return MT_EXIT_USAGE;
    }
    if (nargs == 3 && seq == 0) {
        return usage_error(dlq_usage, "SEQUENCE is an event's sequence, from 1");
    }
    bool list = strcmp(action, "list") == 0, show = strcmp(action, "show") == 0;
    bool redrive = strcmp(action, "redrive") == 0, purge = strcmp(action, "purge") == 0;
    if (!(list || show || redrive || purge)) {
        return usage_error(dlq_usage, "the action must be list, show, redrive or purge");
    }
    if (show && nargs != 3) {
        return usage_error(dlq_usage, "show needs a SEQUENCE");
    }
    if (list && nargs != 2) {
        return usage_error(dlq_usage, "list takes no SEQUENCE");
    }
    char *name = evhttp_encode_uri(args[1]);
    char *path;
    enum evhttp_cmd_type method = EVHTTP_REQ_GET;
    if (list) {
        client c;
        int rc = client_open(&c, url);
        if (rc == MT_EXIT_OK) {
            rc = dlq_list_all(&c, name);
        }
        client_close(&c);
        free(name);
        return rc;
    }
    if (show) {
        path = mt_xasprintf("/subscriptions/%s/dlq?after=%llu&limit=1", name,
                            (unsigned long long) (seq - 1));
    } else {
        /* Without a SEQUENCE, every dead letter: no sequence in the query. */
        method = redrive ? EVHTTP_REQ_POST : EVHTTP_REQ_DELETE;
        char one[40] = "";
        if (seq) {
            snprintf(one, sizeof one, "?sequence=%llu", (unsigned long long) seq);
        }
        path = mt_xasprintf("/subscriptions/%s/dlq%s%s", name, redrive ? "/redrive" : "", one);
    }
    free(name);
    client c;
    int rc = client_open(&c, url);
    reply r;
    reply_init(&r);
    if (rc == MT_EXIT_OK) {
        request q = {method, path, NULL, NULL, 0, NULL};
        if (client_request(&c, &q, &r)) {
            rc = report_unreachable(&c, &r);
        } else if (r.status != 200) {
            rc = report_http_error(&r);
        } else if (show) {
            json_t *a = json_loadb(mt_buf_cstr(&r.body), r.body.len, 0, NULL);
            size_t i;
            json_t *e;
            bool found = false;
            json_array_foreach(a, i, e) {
                const char *s = json_string_value(json_object_get(e, "sequence"));
                if (!s || strtoull(s, NULL, 10) != seq) {
                    continue;
                }
                found = true;
                char *line = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_INDENT(2));
                printf("%s\n", line);
                free(line);
            }
            json_decref(a);
            if (!found) {
                fprintf(stderr, "moontide: no dead letter for sequence %llu in '%s'\n",
                        (unsigned long long) seq, args[1]);
                rc = MT_EXIT_DATAERR;
            } else {
                rc = flush_stdout();
            }
        } else {
            json_t *o = json_loadb(mt_buf_cstr(&r.body), r.body.len, 0, NULL);
            printf("%s %lld dead letter(s)\n", redrive ? "redrove" : "purged",
                   (long long) json_integer_value(json_object_get(o, "count")));
            json_decref(o);
            rc = flush_stdout();
        }
    }
    reply_free(&r);
    client_close(&c);
    free(path);
    return rc;
}

/*
 * mt_topo.h - the topology file: YAML loading and validation.
 *
 * A topology file declares the engine's settings (and, as the engine grows,
 * its topics, subscriptions, projections, sagas, security and bridges).
 * Loading validates everything in one pass and collects every problem as
 * "FILE:LINE:COL: error: message", so `moontide check` can show them all at
 * once. Unknown keys, wrong types, bad sizes and durations are errors.
 * Runs on whichever thread calls it; holds no global state.
 *
 * File shape (version 1):
 *
 *   version: 1
 *   engine:
 *     data_dir: ./data          # relative paths are relative to the process cwd
 *     listen: 127.0.0.1:8080    # host:port
 *     map_size: 1GiB            # LMDB map size; at least 1MiB
 *     durability: fsync         # fsync (default) | nosync (tests, benchmarks)
 *     max_body: 1MiB            # largest accepted HTTP body; 1KiB to 1GiB
 *     wal_size: 64MiB           # write-ahead file size; at least 1MiB
 *     log_level: info           # debug | info | warn | error
 *
 * Sizes are whole numbers with an optional unit (mt_parse_size). The keys
 * projections, sagas, commands, security and bridges are reserved for later
 * versions and refused by name for now.
 */
#ifndef MT_TOPO_H
#define MT_TOPO_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_err.h"

typedef enum mt_durability {
    MT_DURABILITY_FSYNC = 0, /* every acknowledged write is on disk (one fdatasync per group) */
    MT_DURABILITY_NOSYNC     /* no fsync: a process crash loses nothing, a power cut may */
} mt_durability;

typedef struct mt_engine_conf {
    char *data_dir;          /* owned */
    char *listen_host;       /* owned; e.g. "127.0.0.1" */
    uint16_t listen_port;    /* 0 = pick a free port */
    uint64_t map_size;       /* bytes */
    mt_durability durability;
    uint64_t max_body;       /* bytes */
    uint64_t wal_size;       /* bytes */
    char *log_level;         /* owned; "info" by default */
} mt_engine_conf;

/* How a subscription orders deliveries. */
typedef enum mt_ordering {
    MT_ORDER_SUBJECT = 0,    /* per subject in log order; subjects in parallel */
    MT_ORDER_STRICT,         /* one at a time, in log order */
    MT_ORDER_NONE            /* no order; a failure holds back nothing */
} mt_ordering;

/* The name of an ordering, as the topology writes it: "subject", "strict" or "none". */
const char *mt_ordering_name(mt_ordering o);

typedef enum mt_start {
    MT_START_BEGINNING = 0,  /* the whole log */
    MT_START_END,            /* only events appended after the subscription is created */
    MT_START_SEQUENCE,       /* events after start_sequence */
    MT_START_TIME            /* events recorded at or after start_time_us */
} mt_start;

/*
 * A subscription: which events (topic patterns on 'type', an optional
 * content filter), what handles them, and how.
 *
 *   subscriptions:
 *     payments:
 *       topics: ["order.placed", "payment.#"]
 *       filter: { all: [ { exact: { "data.currency": "EUR" } } ] }
 *       handler: handlers/payments.lua   # relative to the process cwd
 *       start: beginning                 # beginning | end | SEQUENCE | RFC 3339 time
 *       ordering: subject                # subject | strict | none
 *       workers: 2                       # 1 to 64
 *       retry: { max_attempts: 5, backoff: 200ms, max_backoff: 30s }
 *       limits: { instructions: 10000000, memory: 16MiB }
 *       deliver: lua                     # lua (handler) | pull (consumers lease over HTTP)
 *                                        # | { webhook: { url: U, secret: whsec_..., concurrency: 4 } }
 *       lease: 30s                       # pull: lease length
 *       window: { from: "22:00", to: "06:00", tz: Europe/Paris }   # off-peak only
 *       ttl: 1h                          # events older than this are not delivered
 *       on_expiry: drop                  # drop | dead-letter
 */
typedef struct mt_sub_conf {
    char *name;              /* owned */
    char **topics;           /* owned; ntopics patterns */
    int ntopics;
    char *filter_json;       /* owned; the filter as JSON text, NULL = none */
    char *handler;           /* owned; path of the Lua handler */
    char *handler_src;       /* owned; NULL, or the handler's text to load instead of reading
                              * 'handler': a reload's, checked by its trial (not copied) */
    size_t handler_src_len;
    int handler_line;        /* where the file named it, from 1 (0: not from a file) */
    int handler_col;
    mt_start start;
    uint64_t start_sequence; /* with MT_START_SEQUENCE */
    int64_t start_time_us;   /* with MT_START_TIME */
    mt_ordering ordering;
    int workers;
    uint32_t max_attempts;   /* attempts before the dead-letter queue; >= 1 */
    uint64_t backoff_ms;     /* first retry delay */
    uint64_t max_backoff_ms; /* cap of the exponential backoff */
    uint64_t max_instructions; /* Lua instruction budget per invocation */
    uint64_t max_memory;     /* Lua memory limit, bytes */
    uint64_t max_time_ms;    /* a run past it ends the process (mt_watch.h) */
    bool pull;               /* deliver: pull, or a webhook (events are leased; no handler) */
    char *webhook_url;       /* owned; deliver: { webhook: { url, secret } }, else NULL */
    char *webhook_secret;    /* owned; "whsec_<base64>", or NULL for unsigned */
    int webhook_concurrency; /* requests in flight to the endpoint */
    uint64_t lease_ms;       /* pull: how long a leased event is reserved for its consumer */
    uint64_t ttl_ms;         /* 0 = events never expire for this subscription */
    bool priority;           /* deliver higher `priority` events first */
    bool has_window;         /* window: consume only between window_from and window_to */
    int window_from;         /* seconds after local midnight */
    int window_to;           /* seconds after local midnight; before 'from' wraps midnight */
    char *window_tz;         /* owned; IANA zone such as "Europe/Paris", NULL = UTC */
    bool expiry_dead_letter; /* on_expiry: dead-letter (else drop, counted) */
} mt_sub_conf;

typedef struct mt_topo {
    char *path;              /* owned; the file it was loaded from, or NULL for defaults */
    mt_engine_conf engine;
    mt_sub_conf *subs;       /* owned; nsubs entries, in file order */
    int nsubs;
} mt_topo;

/* A list of error lines, each "FILE:LINE:COL: error: message". */
typedef struct mt_topo_errs {
    char **lines;            /* owned, 'count' strings */
    int count;
} mt_topo_errs;

/*
 * Returns a topology with every default filled in (no file). Never fails.
 * Free with mt_topo_free().
 */
mt_topo *mt_topo_new_default(void);

/*
 * Loads and validates 'path'. On success sets *out (caller frees with
 * mt_topo_free) and returns MT_OK with errs->count == 0. On failure sets
 * *out = NULL, appends every problem found to 'errs' and returns MT_ECONFIG
 * (or MT_EIO if the file cannot be read: errs then holds one line naming the
 * file and the OS error). 'errs' must be zeroed or previously freed by the caller.
 *
 * Errors come in file order, each located at the offending node: the key for
 * unknown, duplicate and reserved keys, the value for bad values, the
 * enclosing mapping for a missing key. libyaml cannot resume after a YAML
 * syntax error, so checking stops at the first one (reported at the position
 * libyaml gives; a syntax error in the first document is the only error).
 * Keys absent from the file keep the defaults of mt_topo_new_default(); an
 * empty "engine:" means all defaults. Only one YAML document is allowed.
 * Files over 16 MiB are refused (MT_ECONFIG), which bounds memory: running
 * out of it aborts, as mt_x* allocations do.
 */
mt_err mt_topo_load(const char *path, mt_topo **out, mt_topo_errs *errs);

/*
 * Compiles the handler file at 'path'; false with the reason in err if it
 * does not compile.
 */
typedef bool (*mt_topo_compile_fn)(const char *path, char *err, size_t errlen);

/*
 * mt_topo_load for `moontide check`: also compiles each subscription's
 * handler as it is read, and reports a handler that does not compile at its
 * `handler:` line, with every other error of the file.
 */
mt_err mt_topo_load_compiling(const char *path, mt_topo_compile_fn compile, mt_topo **out,
                              mt_topo_errs *errs);

/*
 * Parses "host:port" (host may be a name, an IPv4 address, or "[v6]").
 * Sets *host (owned by caller; an IPv6 address without its brackets, e.g.
 * "::1") and *port. MT_EINVAL, with *host = NULL and *port = 0, on a NULL
 * string, a missing or non-decimal or out-of-range (> 65535) port, an empty
 * host, or an IPv6 address without brackets.
 */
mt_err mt_topo_parse_listen(const char *s, char **host, uint16_t *port);

/*
 * Parses the definition of subscription 'name' from 'text' (a JSON object,
 * or the same in YAML: the fields a subscription has under
 * `subscriptions:`), with the same checks as mt_topo_load, and one more
 * for a definition made over HTTP: the handler path must be relative with
 * no ".." word, so it names a file of the project. Text that parses as
 * JSON (jansson; duplicate keys are an error) is read as JSON, with JSON's
 * types and every string as it is, and its errors are "ORIGIN:POINTER:
 * error: message" with the JSON Pointer of the value at fault ("ORIGIN:
 * error: message" for the whole object); other text is YAML, with errors
 * "ORIGIN:LINE:COL: error: message". On success sets *out (free with
 * mt_sub_conf_free); else MT_ECONFIG with every problem in 'errs'.
 */
mt_err mt_topo_parse_sub(const char *name, const char *text, size_t len, const char *origin,
                         mt_sub_conf **out, mt_topo_errs *errs);

/*
 * Why `workers` above 1 is refused for a pull or webhook subscription (it
 * runs nothing): in topology files at once, over HTTP by the PUT (a
 * definition an older engine stored with it still loads). Per thread.
 */
const char *mt_topo_workers_unused(const char *name);

/*
 * mt_topo_parse_sub for a definition stored earlier, to learn what it
 * declares even when its handler file is gone: a handler that cannot be
 * read is not an error here.
 */
mt_err mt_topo_parse_stored_sub(const char *name, const char *text, size_t len,
                                const char *origin, mt_sub_conf **out, mt_topo_errs *errs);

/*
 * What a replacement may not change, read leniently from the JSON of a
 * stored definition that no longer parses (an older engine took, say,
 * "workers": "2"): its delivery ("lua", "pull" or "webhook"), ordering and
 * priority. False if even they cannot be told.
 */
bool mt_topo_stored_fixed(const char *json, size_t len, const char **kind, mt_ordering *ordering,
                          bool *priority);

/* Whether 'name' (n bytes) is a valid subscription name: 1 to 64 of [A-Za-z0-9_.-]. */
bool mt_topo_valid_sub_name(const char *name, size_t n);

/* A deep copy of 'c'; free with mt_sub_conf_free. */
mt_sub_conf *mt_sub_conf_copy(const mt_sub_conf *c);

/* Sets every key of 'c' that has a default to it (retry, limits, ordering ...). */
void mt_sub_conf_defaults(mt_sub_conf *c);

/* Frees a conf from mt_topo_parse_sub or mt_sub_conf_copy; NULL does nothing. */
void mt_sub_conf_free(mt_sub_conf *c);

/* Frees 't' and everything it owns; NULL does nothing. */
void mt_topo_free(mt_topo *t);
/* Frees the lines and zeroes 'errs' for reuse; NULL does nothing. */
void mt_topo_errs_free(mt_topo_errs *errs);

#endif

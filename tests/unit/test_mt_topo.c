/*
 * test_mt_topo.c - the topology file: defaults, every key, and the exact
 * "FILE:LINE:COL: error: message" lines for each kind of mistake.
 */
#include "mt_test.h"
#include <sys/stat.h>
#include <jansson.h>
#include "mt_mem.h"
#include "mt_topo.h"

#define KIB (1ULL << 10)
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

/* Each test gets a fresh directory for the files it writes. */
/* $MT_SRCDIR/tests/data/topo/NAME (caller frees). */
static char *fixture(const char *name)
{
    const char *src = getenv("MT_SRCDIR");
    if (!src || !*src) {
        src = ".";
    }
    char *path = malloc(strlen(src) + strlen(name) + 32);
    assert_non_null(path);
    sprintf(path, "%s/tests/data/topo/%s", src, name);
    return path;
}

static void print_errs(const mt_topo_errs *errs)
{
    for (int i = 0; i < errs->count; i++) {
        print_error("  got: %s\n", errs->lines[i]);
    }
}

/*
 * Loads 'path' and checks the result: rc, and the error lines exactly, each
 * written without its "PATH:" prefix ('want' is NULL-terminated).
 */
static void expect_file_errors(const char *path, mt_err want_rc, const char *const *want)
{
    mt_topo *t = (mt_topo *) &t; /* not NULL, so the test sees it reset */
    mt_topo_errs errs = {0};
    mt_err rc = mt_topo_load(path, &t, &errs);
    int nwant = 0;
    while (want[nwant]) {
        nwant++;
    }
    if (rc != want_rc || errs.count != nwant) {
        print_error("rc %s (want %s), %d errors (want %d)\n", mt_err_str(rc),
                    mt_err_str(want_rc), errs.count, nwant);
        print_errs(&errs);
        fail();
    }
    for (int i = 0; i < nwant; i++) {
        char *line = malloc(strlen(path) + strlen(want[i]) + 2);
        assert_non_null(line);
        sprintf(line, "%s:%s", path, want[i]);
        if (strcmp(errs.lines[i], line) != 0) {
            print_errs(&errs);
        }
        assert_string_equal(errs.lines[i], line);
        free(line);
    }
    assert_null(t);
    mt_topo_errs_free(&errs);
}

/* Like expect_file_errors, for 'text' written to a temporary topo.yaml. */
static void expect_text_errors(void **state, const char *text, const char *const *want)
{
    char *path = mt_test_write_file(*state, "topo.yaml", text);
    expect_file_errors(path, MT_ECONFIG, want);
    free(path);
}

#define EXPECT_ERRORS(state, text, ...) \
    expect_text_errors((state), (text), (const char *const[]){__VA_ARGS__, NULL})

/* Loads 'text', which must be valid; caller frees the result. */
static mt_topo *load_ok(void **state, const char *text)
{
    char *path = mt_test_write_file(*state, "topo.yaml", text);
    mt_topo *t = NULL;
    mt_topo_errs errs = {0};
    mt_err rc = mt_topo_load(path, &t, &errs);
    if (rc != MT_OK) {
        print_errs(&errs);
    }
    assert_int_equal(rc, MT_OK);
    assert_int_equal(errs.count, 0);
    assert_non_null(t);
    assert_string_equal(t->path, path);
    mt_topo_errs_free(&errs);
    free(path);
    return t;
}

static void assert_defaults(const mt_engine_conf *e)
{
    assert_string_equal(e->data_dir, "./data");
    assert_string_equal(e->listen_host, "127.0.0.1");
    assert_int_equal(e->listen_port, 8080);
    assert_int_equal(e->map_size, GIB);
    assert_int_equal(e->durability, MT_DURABILITY_FSYNC);
    assert_int_equal(e->max_body, MIB);
    assert_int_equal(e->wal_size, 64 * MIB);
    assert_string_equal(e->log_level, "info");
}

/* ---- valid files ---- */

/* mt_topo_parse_sub must refuse JSON definition 'def' with exactly the one error 'want'. */
static void expect_sub_error(const char *def, const char *want)
{
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_parse_sub("s", def, strlen(def), "request", &c, &errs), MT_ECONFIG);
    assert_null(c);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.lines[0], want);
    mt_topo_errs_free(&errs);
}

static void test_topo_new_default_has_every_default(void **state)
{
    (void) state;
    mt_topo *t = mt_topo_new_default();
    assert_null(t->path);
    assert_defaults(&t->engine);
    mt_topo_free(t);
    mt_topo_free(NULL);
}

static void test_topo_defaults_fill_missing_keys(void **state)
{
    mt_topo *t = load_ok(state, "version: 1\n");
    assert_defaults(&t->engine);
    mt_topo_free(t);

    t = load_ok(state, "version: 1\n"
                       "engine:\n"
                       "  listen: 0.0.0.0:9000\n"
                       "  log_level: warn\n");
    assert_string_equal(t->engine.listen_host, "0.0.0.0");
    assert_int_equal(t->engine.listen_port, 9000);
    assert_string_equal(t->engine.log_level, "warn");
    assert_string_equal(t->engine.data_dir, "./data");
    assert_int_equal(t->engine.map_size, GIB);
    assert_int_equal(t->engine.durability, MT_DURABILITY_FSYNC);
    assert_int_equal(t->engine.max_body, MIB);
    assert_int_equal(t->engine.wal_size, 64 * MIB);
    mt_topo_free(t);
}

static void test_topo_empty_engine_section_means_defaults(void **state)
{
    mt_topo *t = load_ok(state, "version: 1\n"
                                "engine:\n"
                                "  # data_dir: /srv/moontide\n");
    assert_defaults(&t->engine);
    mt_topo_free(t);

    t = load_ok(state, "version: 1\nengine: {}\n");
    assert_defaults(&t->engine);
    mt_topo_free(t);
}

static void test_topo_reads_every_engine_key(void **state)
{
    (void) state;
    char *path = fixture("full.yaml");
    mt_topo *t = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_load(path, &t, &errs), MT_OK);
    assert_int_equal(errs.count, 0);
    assert_string_equal(t->path, path);
    assert_string_equal(t->engine.data_dir, "/var/lib/moontide");
    assert_string_equal(t->engine.listen_host, "::1");
    assert_int_equal(t->engine.listen_port, 9000);
    assert_int_equal(t->engine.map_size, 8 * GIB);
    assert_int_equal(t->engine.durability, MT_DURABILITY_NOSYNC);
    assert_int_equal(t->engine.max_body, 256 * KIB);
    assert_int_equal(t->engine.wal_size, 128 * MIB);
    assert_string_equal(t->engine.log_level, "debug");
    mt_topo_free(t);
    free(path);
}

static void test_topo_accepts_quoted_and_flow_values(void **state)
{
    mt_topo *t = load_ok(state, "version: 1\n"
                                "engine: {data_dir: 'my data', map_size: \"2GiB\","
                                " max_body: 1024, wal_size: 1MiB}\n");
    assert_string_equal(t->engine.data_dir, "my data");
    assert_int_equal(t->engine.map_size, 2 * GIB);
    assert_int_equal(t->engine.max_body, 1024);
    assert_int_equal(t->engine.wal_size, MIB);
    mt_topo_free(t);
}

static void test_topo_loads_shipped_default_config(void **state)
{
    (void) state;
    const char *src = getenv("MT_SRCDIR");
    if (!src || !*src) {
        src = ".";
    }
    char *path = malloc(strlen(src) + 32);
    assert_non_null(path);
    sprintf(path, "%s/config/default.yaml", src);
    mt_topo *t = NULL;
    mt_topo_errs errs = {0};
    mt_err rc = mt_topo_load(path, &t, &errs);
    if (rc) {
        print_errs(&errs);
    }
    assert_int_equal(rc, MT_OK);
    assert_defaults(&t->engine);
    mt_topo_free(t);
    mt_topo_errs_free(&errs);
    free(path);
}

/* ---- errors ---- */

static void test_topo_reports_every_error_in_one_pass(void **state)
{
    (void) state;
    char *path = fixture("many_errors.yaml");
    expect_file_errors(path, MT_ECONFIG, (const char *const[]){
        "5:11: error: 'engine.listen' must be host:port: the port must be a number "
        "from 0 to 65535 (got '127.0.0.1:99999')",
        "6:3: error: unknown key 'map_sise' in engine (expected one of: data_dir, listen, "
        "map_size, durability, max_body, wal_size, log_level)",
        "7:15: error: 'engine.durability' must be one of: fsync, nosync (got 'always')",
        "8:13: error: 'engine.max_body' must be between 1KiB and 1GiB (got '2GiB')",
        "10:3: error: 'subscriptions' must be a mapping of subscription names (got a sequence)",
        NULL});
    free(path);
}

static void test_topo_unknown_key_names_line_and_column(void **state)
{
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "    map_sise: 1GiB\n",
                  "3:5: error: unknown key 'map_sise' in engine (expected one of: data_dir, "
                  "listen, map_size, durability, max_body, wal_size, log_level)");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engnie:\n"
                  "  listen: 127.0.0.1:1\n",
                  "2:1: error: unknown key 'engnie' at top level (expected one of: version, "
                  "engine, subscriptions)");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine: {listen: 127.0.0.1:1, colour: blue}\n",
                  "2:31: error: unknown key 'colour' in engine (expected one of: data_dir, "
                  "listen, map_size, durability, max_body, wal_size, log_level)");
}

static void test_topo_reserved_sections_are_refused_by_name(void **state)
{
    static const char *const names[] = {"projections", "sagas", "commands", "security",
                                        "bridges"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char text[128];
        char want[128];
        snprintf(text, sizeof text, "version: 1\n%s: {}\n", names[i]);
        snprintf(want, sizeof want,
                 "2:1: error: '%s' is not supported by this version of moontide", names[i]);
        EXPECT_ERRORS(state, text, want);
    }
}

static void test_topo_reads_a_subscription_with_defaults_and_every_key(void **state)
{
    (void) state;
    char *dir = mt_test_tmpdir();
    char *handler = mt_test_write_file(dir, "h.lua", "return function(e, ctx) end\n");
    char text[1024];
    snprintf(text, sizeof text,
             "version: 1\n"
             "subscriptions:\n"
             "  plain:\n"
             "    topics: order.placed\n"
             "    handler: %s\n"
             "  payments:\n"
             "    topics: [\"order.placed\", \"order.*.cancelled\", \"payment.#\"]\n"
             "    filter: { all: [ { exact: { \"data.currency\": \"EUR\" } },\n"
             "                     { prefix: { subject: \"order-\" } } ] }\n"
             "    handler: %s\n"
             "    start: 42\n"
             "    ordering: strict\n"
             "    workers: 2\n"
             "    retry: { max_attempts: 3, backoff: 50ms, max_backoff: 2s }\n"
             "    limits: { instructions: 5000, memory: 1MiB, time: 2m }\n",
             handler, handler);
    char *path = mt_test_write_file(dir, "subs.yaml", text);
    mt_topo *t;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_load(path, &t, &errs), MT_OK);
    assert_int_equal(t->nsubs, 2);
    mt_sub_conf *a = &t->subs[0], *b = &t->subs[1];
    assert_string_equal(a->name, "plain");
    assert_int_equal(a->ntopics, 1);
    assert_string_equal(a->topics[0], "order.placed");
    assert_null(a->filter_json);
    assert_int_equal(a->start, MT_START_BEGINNING);
    assert_int_equal(a->ordering, MT_ORDER_SUBJECT);
    assert_int_equal(a->workers, 1);
    assert_int_equal(a->max_attempts, 5);
    assert_int_equal(a->backoff_ms, 200);
    assert_int_equal(a->max_backoff_ms, 30000);
    assert_int_equal(a->max_instructions, 10000000);
    assert_int_equal(a->max_memory, 16u << 20);
    assert_int_equal(a->max_time_ms, 30000);
    assert_string_equal(b->name, "payments");
    assert_int_equal(b->ntopics, 3);
    assert_string_equal(b->topics[2], "payment.#");
    assert_non_null(b->filter_json);
    assert_non_null(strstr(b->filter_json, "\"data.currency\":\"EUR\""));
    assert_int_equal(b->start, MT_START_SEQUENCE);
    assert_int_equal(b->start_sequence, 42);
    assert_int_equal(b->ordering, MT_ORDER_STRICT);
    assert_int_equal(b->workers, 2);
    assert_int_equal(b->max_attempts, 3);
    assert_int_equal(b->backoff_ms, 50);
    assert_int_equal(b->max_backoff_ms, 2000);
    assert_int_equal(b->max_instructions, 5000);
    assert_int_equal(b->max_memory, 1u << 20);
    assert_int_equal(b->max_time_ms, 120000);
    mt_topo_free(t);
    free(handler);
    free(path);
    mt_test_rmdir(dir);
}

static void test_topo_subscription_errors_name_line_and_column(void **state)
{
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "subscriptions:\n"
                  "  s1:\n"
                  "    topics: [\"order.*x\"]\n"
                  "    handler: /nonexistent/h.lua\n"
                  "    ordering: sideways\n"
                  "    filter: { exactly: { type: a } }\n"
                  "    retry: { max_attempts: 0 }\n"
                  "    limits: { time: 500ms }\n",
                  "4:14: error: 'subscriptions.s1.topics': 'order.*x' is not a topic pattern "
                  "('.'-separated words; '*' and '#' only as whole words)",
                  "5:14: error: 'subscriptions.s1.handler': cannot read '/nonexistent/h.lua': "
                  "No such file or directory",
                  "6:15: error: 'subscriptions.s1.ordering' must be one of: subject, strict, "
                  "none (got 'sideways')",
                  "7:15: error: 'subscriptions.s1.filter': unknown dialect 'exactly' "
                  "(expected exact, prefix, suffix, all, any or not)",
                  "8:28: error: 'subscriptions.s1.retry.max_attempts' must be a whole number "
                  "from 1 to 1000 (got '0')",
                  "9:21: error: 'subscriptions.s1.limits.time' must be a duration from 1s to 1h, "
                  "such as 200ms, 30s or 5m (got '500ms')");
    /* Every duration has a bound: 2^64 ms passed and then wrapped in µs. */
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "subscriptions:\n"
                  "  s1:\n"
                  "    topics: [\"a\"]\n"
                  "    deliver: pull\n"
                  "    lease: 2562047789h\n"
                  "    ttl: 18446744073709551615ms\n"
                  "    retry: { backoff: 2h, max_backoff: 25h }\n",
                  "6:12: error: 'subscriptions.s1.lease' must be a duration from 1ms to 12h, "
                  "such as 200ms, 30s or 5m (got '2562047789h')",
                  "7:10: error: 'subscriptions.s1.ttl' must be a duration from 1ms to 3650d, "
                  "such as 200ms, 30s or 5m (got '18446744073709551615ms')",
                  "8:23: error: 'subscriptions.s1.retry.backoff' must be a duration from 0 to 1h, "
                  "such as 200ms, 30s or 5m (got '2h')",
                  "8:40: error: 'subscriptions.s1.retry.max_backoff' must be a duration from 0 "
                  "to 24h, such as 200ms, 30s or 5m (got '25h')");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "subscriptions:\n"
                  "  s1:\n"
                  "    handler: /etc/hostname\n",
                  "4:5: error: missing required key 'topics' in subscription 's1'");
}

/*
 * Files small enough to pass the size cap that once cost unbounded memory or
 * time: aliases of aliases expanded in a filter (ten times a level: eight
 * levels asked for 10^8 values), collections nested thousands deep (libyaml
 * spends time in proportion to the depth on every token), and mappings of
 * tens of thousands of keys (each compared with those before it).
 */
static void test_topo_small_files_with_huge_expansions_are_refused(void **state)
{
    mt_buf b;
    mt_buf_init(&b);
    mt_buf_adds(&b, "version: 1\nsubscriptions:\n  s1:\n    topics: [\"a\"]\n    deliver: pull\n"
                    "    filter: {any: [&l0 {exact: {subject: \"x\"}}");
    for (int level = 1; level <= 8; level++) {
        mt_buf_addf(&b, ", &l%d {any: [", level);
        for (int k = 0; k < 10; k++) {
            mt_buf_addf(&b, "%s*l%d", k ? ", " : "", level - 1);
        }
        mt_buf_adds(&b, "]}");
    }
    mt_buf_adds(&b, "]}\n");
    EXPECT_ERRORS(state, mt_buf_cstr(&b),
                  "6:13: error: 'subscriptions.s1.filter' has more than 10000 values once its "
                  "aliases are expanded");

    b.len = 0;
    mt_buf_adds(&b, "version: 1\nengine: ");
    for (int i = 0; i < 100000; i++) {
        mt_buf_adds(&b, "[");
    }
    EXPECT_ERRORS(state, mt_buf_cstr(&b), "2:72: error: nested deeper than 64 levels");

    b.len = 0;
    mt_buf_adds(&b, "version: 1\nengine:\n");
    for (int i = 0; i < 40000; i++) {
        mt_buf_addf(&b, "  k%d: 1\n", i);
    }
    EXPECT_ERRORS(state, mt_buf_cstr(&b),
                  "3:3: error: a mapping of 40000 keys in engine; at most 10000");
    mt_buf_free(&b);

    /* A definition over HTTP has the same limit, placed by JSON Pointer. */
    char def[400] = "{\"topics\": ";
    for (int i = 0; i < 70; i++) {
        strcat(def, "[");
    }
    for (int i = 0; i < 70; i++) {
        strcat(def, "]");
    }
    strcat(def, "}");
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_parse_sub("k", def, strlen(def), "request", &c, &errs), MT_ECONFIG);
    assert_int_equal(errs.count, 1);
    char want[400] = "request:/topics";
    for (int i = 0; i < 63; i++) {
        strcat(want, "/0");
    }
    strcat(want, ": error: nested deeper than 64 levels");
    assert_string_equal(errs.lines[0], want);
    mt_topo_errs_free(&errs);
}

/* One subscription from a JSON definition: the same checks, located by JSON Pointer. */
static void test_topo_parse_sub_from_json(void **state)
{
    (void) state;
    const char *ok = "{\"topics\":[\"job.#\"],\"deliver\":\"pull\",\"priority\":true,"
                     "\"retry\":{\"max_attempts\":3,\"backoff\":\"1s\"},\"lease\":\"5s\","
                     "\"filter\":{\"prefix\":{\"subject\":\"a-\"}}}";
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_parse_sub("jobs", ok, strlen(ok), "request", &c, &errs), MT_OK);
    assert_int_equal(errs.count, 0);
    assert_string_equal(c->name, "jobs");
    assert_int_equal(c->ntopics, 1);
    assert_string_equal(c->topics[0], "job.#");
    assert_true(c->pull && c->priority);
    assert_int_equal(c->max_attempts, 3);
    assert_int_equal(c->backoff_ms, 1000);
    assert_int_equal(c->lease_ms, 5000);
    assert_int_equal(c->workers, 1); /* defaults fill the rest */
    assert_non_null(c->filter_json);

    mt_sub_conf *copy = mt_sub_conf_copy(c);
    mt_sub_conf_free(c);
    assert_string_equal(copy->topics[0], "job.#");
    assert_string_equal(copy->name, "jobs");
    assert_non_null(copy->filter_json);
    mt_sub_conf_free(copy);

    const char *bad = "{\"topics\": [\"a.*b\"],\n \"deliver\": \"pull\", \"colour\": 1}";
    c = (mt_sub_conf *) &c;
    assert_int_equal(mt_topo_parse_sub("jobs", bad, strlen(bad), "request", &c, &errs),
                     MT_ECONFIG);
    assert_null(c);
    assert_int_equal(errs.count, 2);
    assert_string_equal(errs.lines[0], "request:/topics/0: error: 'subscriptions.jobs.topics': "
                        "'a.*b' is not a topic pattern ('.'-separated words; '*' and '#' only "
                        "as whole words)");
    assert_non_null(strstr(errs.lines[1], "request:/colour: error: unknown key 'colour' in "
                                          "subscription 'jobs'"));
    mt_topo_errs_free(&errs);

    /* In JSON as in YAML a quoted number or boolean is a string; a bare 0 is a duration. */
    const char *typed = "{\"topics\": [\"a\"], \"deliver\": \"pull\", \"workers\": \"2\",\n"
                        " \"priority\": \"true\", \"retry\": {\"max_attempts\": \"5\", "
                        "\"backoff\": 0}}";
    assert_int_equal(mt_topo_parse_sub("jobs", typed, strlen(typed), "request", &c, &errs),
                     MT_ECONFIG);
    assert_int_equal(errs.count, 3);
    assert_string_equal(errs.lines[0], "request:/workers: error: 'subscriptions.jobs.workers' must be "
                        "a whole number from 1 to 64, not a quoted string (got '2')");
    assert_string_equal(errs.lines[1], "request:/priority: error: 'subscriptions.jobs.priority' must be "
                        "true or false, not a quoted string (got 'true')");
    assert_string_equal(errs.lines[2], "request:/retry/max_attempts: error: 'subscriptions.jobs.retry."
                        "max_attempts' must be a whole number from 1 to 1000, not a quoted "
                        "string (got '5')");
    mt_topo_errs_free(&errs);
    const char *zero = "{\"topics\": [\"a\"], \"deliver\": \"pull\", \"retry\": {\"backoff\": 0}}";
    assert_int_equal(mt_topo_parse_sub("jobs", zero, strlen(zero), "request", &c, &errs), MT_OK);
    assert_int_equal(c->backoff_ms, 0);
    mt_sub_conf_free(c);

    const char *list = "[1, 2]";
    assert_int_equal(mt_topo_parse_sub("jobs", list, strlen(list), "request", &c, &errs),
                     MT_ECONFIG);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.lines[0], "request: error: a subscription definition must be "
                        "an object with at least 'topics'");
    mt_topo_errs_free(&errs);

    assert_int_equal(mt_topo_parse_sub("bad name", ok, strlen(ok), "request", &c, &errs),
                     MT_ECONFIG);
    assert_int_equal(errs.count, 1);
    mt_topo_errs_free(&errs);
    assert_false(mt_topo_valid_sub_name("a/b", 3));
    assert_true(mt_topo_valid_sub_name("a.b-c_1", 7));
}

/*
 * A stored definition an older engine took and this one refuses ("workers":
 * "2"): what a PUT may not change is still read from it, so the PUT can
 * replace it and keep the subscription's state.
 */
static void test_topo_stored_fixed_reads_what_a_put_may_not_change(void **state)
{
    (void) state;
    const char *kind = NULL;
    mt_ordering o = MT_ORDER_NONE;
    bool prio = false;
    const char *old = "{\"topics\":[\"a\"],\"workers\":\"2\",\"priority\":\"true\"}";
    assert_true(mt_topo_stored_fixed(old, strlen(old), &kind, &o, &prio));
    assert_string_equal(kind, "lua");
    assert_int_equal(o, MT_ORDER_SUBJECT);
    assert_true(prio);
    const char *pull = "{\"deliver\":\"pull\",\"ordering\":\"strict\",\"priority\":false}";
    assert_true(mt_topo_stored_fixed(pull, strlen(pull), &kind, &o, &prio));
    assert_string_equal(kind, "pull");
    assert_int_equal(o, MT_ORDER_STRICT);
    assert_false(prio);
    const char *hook = "{\"deliver\":{\"webhook\":{\"url\":\"http://x/\"}},\"ordering\":\"none\"}";
    assert_true(mt_topo_stored_fixed(hook, strlen(hook), &kind, &o, &prio));
    assert_string_equal(kind, "webhook");
    assert_int_equal(o, MT_ORDER_NONE);
    static const char *const unknown[] = {"{\"ordering\":\"sideways\"}", "{\"deliver\":\"smoke\"}",
                                          "{\"priority\":\"maybe\"}", "[1]", "not json"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_false(mt_topo_stored_fixed(unknown[i], strlen(unknown[i]), &kind, &o, &prio));
    }
}

/* Over HTTP a handler is a file of the project: absolute paths and ".." words are refused. */
static void test_topo_parse_sub_keeps_handlers_in_the_project(void **state)
{
    (void) state;
    static const char *const refused[] = {"/etc/hostname", "../x.lua", "handlers/../../x.lua",
                                          "a/..", "..", "handlers//../../x.lua"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        char def[200];
        snprintf(def, sizeof def, "{\"topics\":[\"k.#\"],\"handler\":\"%s\"}", refused[i]);
        mt_sub_conf *c = NULL;
        mt_topo_errs errs = {0};
        assert_int_equal(mt_topo_parse_sub("k", def, strlen(def), "request", &c, &errs),
                         MT_ECONFIG);
        assert_int_equal(errs.count, 1);
        char want[300];
        snprintf(want, sizeof want, "'subscriptions.k.handler': '%s' is outside the engine's "
                 "working directory", refused[i]);
        assert_non_null(strstr(errs.lines[0], want));
        mt_topo_errs_free(&errs);
        /* a stored definition too: one made before this check was kept */
        assert_int_equal(mt_topo_parse_stored_sub("k", def, strlen(def), "stored", &c, &errs),
                         MT_ECONFIG);
        mt_topo_errs_free(&errs);
    }
    /* ".." inside a word is a name like any other */
    const char *odd = "{\"topics\":[\"k.#\"],\"handler\":\"handlers/..h.lua\"}";
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_parse_stored_sub("k", odd, strlen(odd), "stored", &c, &errs), MT_OK);
    assert_string_equal(c->handler, "handlers/..h.lua");
    mt_sub_conf_free(c);
}

/* A stored definition is read for what it declares, even with its handler file gone. */
static void test_topo_parse_stored_sub_allows_a_missing_handler(void **state)
{
    (void) state;
    const char *def = "{\"topics\":[\"k.#\"],\"handler\":\"nonexistent/h.lua\","
                      "\"ordering\":\"strict\"}";
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_parse_sub("k", def, strlen(def), "request", &c, &errs), MT_ECONFIG);
    assert_null(c);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.lines[0], "cannot read 'nonexistent/h.lua'"));
    mt_topo_errs_free(&errs);

    assert_int_equal(mt_topo_parse_stored_sub("k", def, strlen(def), "stored", &c, &errs), MT_OK);
    assert_int_equal(errs.count, 0);
    assert_string_equal(c->handler, "nonexistent/h.lua");
    assert_int_equal(c->ordering, MT_ORDER_STRICT);
    mt_sub_conf_free(c);

    /* Every other check still holds. */
    const char *bad = "{\"topics\":[\"k.#\"],\"handler\":\"nonexistent/h.lua\",\"colour\":1}";
    assert_int_equal(mt_topo_parse_stored_sub("k", bad, strlen(bad), "stored", &c, &errs),
                     MT_ECONFIG);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.lines[0], "unknown key 'colour'"));
    mt_topo_errs_free(&errs);
}

typedef struct value_case {
    const char *line;       /* one engine line, indented by two spaces */
    const char *error;      /* expected error without "PATH:3:" */
} value_case;

/* Each case: "version: 1\nengine:\n" + line; one error on line 3. */
static void expect_engine_value_errors(void **state, const value_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char text[256];
        char want[512];
        snprintf(text, sizeof text, "version: 1\nengine:\n%s\n", cases[i].line);
        snprintf(want, sizeof want, "3:%s", cases[i].error);
        EXPECT_ERRORS(state, text, want);
    }
}

static void test_topo_bad_sizes_name_key_and_range(void **state)
{
    static const value_case cases[] = {
        {"  map_size: lots",
         "13: error: 'engine.map_size' must be a size such as 64MiB or 1GiB (got 'lots')"},
        {"  map_size: 1.5GiB",
         "13: error: 'engine.map_size' must be a size such as 64MiB or 1GiB (got '1.5GiB')"},
        {"  map_size: -1",
         "13: error: 'engine.map_size' must be a size such as 64MiB or 1GiB (got '-1')"},
        {"  map_size: 1 GiB",
         "13: error: 'engine.map_size' must be a size such as 64MiB or 1GiB (got '1 GiB')"},
        {"  map_size: 99999999999TiB",
         "13: error: 'engine.map_size' must be a size such as 64MiB or 1GiB "
         "(got '99999999999TiB')"},
        {"  map_size: 512KiB",
         "13: error: 'engine.map_size' must be at least 1MiB (got '512KiB')"},
        {"  max_body: 1000",
         "13: error: 'engine.max_body' must be between 1KiB and 1GiB (got '1000')"},
        {"  max_body: 1025MiB",
         "13: error: 'engine.max_body' must be between 1KiB and 1GiB (got '1025MiB')"},
        {"  wal_size: 0",
         "13: error: 'engine.wal_size' must be at least 1MiB (got '0')"},
        {"  wal_size: ''",
         "13: error: 'engine.wal_size' must not be empty"},
    };
    expect_engine_value_errors(state, cases, sizeof cases / sizeof cases[0]);

    mt_topo *t = load_ok(state, "version: 1\n"
                                "engine:\n"
                                "  map_size: 1MiB\n"
                                "  max_body: 1GiB\n"
                                "  wal_size: 1048576\n");
    assert_int_equal(t->engine.map_size, MIB);
    assert_int_equal(t->engine.max_body, GIB);
    assert_int_equal(t->engine.wal_size, MIB);
    mt_topo_free(t);
}

static void test_topo_bad_choices_list_the_allowed_values(void **state)
{
    static const value_case cases[] = {
        {"  durability: always",
         "15: error: 'engine.durability' must be one of: fsync, nosync (got 'always')"},
        {"  durability: FSYNC",
         "15: error: 'engine.durability' must be one of: fsync, nosync (got 'FSYNC')"},
        {"  log_level: verbose",
         "14: error: 'engine.log_level' must be one of: debug, info, warn, error "
         "(got 'verbose')"},
    };
    expect_engine_value_errors(state, cases, sizeof cases / sizeof cases[0]);
}

static void test_topo_bad_listen_gives_the_reason(void **state)
{
    static const value_case cases[] = {
        {"  listen: localhost",
         "11: error: 'engine.listen' must be host:port: missing ':port' (got 'localhost')"},
        {"  listen: :8080",
         "11: error: 'engine.listen' must be host:port: empty host (got ':8080')"},
        {"  listen: ::1:8080",
         "11: error: 'engine.listen' must be host:port: an IPv6 address needs brackets, "
         "as in [::1]:8080 (got '::1:8080')"},
        {"  listen: 8080",
         "11: error: 'engine.listen' must be host:port: missing ':port' (got '8080')"},
    };
    expect_engine_value_errors(state, cases, sizeof cases / sizeof cases[0]);
}

static void test_topo_wrong_type(void **state)
{
    static const value_case cases[] = {
        {"  listen: {host: localhost, port: 80}",
         "11: error: 'engine.listen' must be host:port (got a mapping)"},
        {"  data_dir: [a, b]",
         "13: error: 'engine.data_dir' must be a directory path (got a sequence)"},
        {"  data_dir:",
         "12: error: 'engine.data_dir' must be a directory path (got an empty value)"},
        {"  map_size: ~",
         "13: error: 'engine.map_size' must be a size such as 64MiB or 1GiB "
         "(got an empty value)"},
        {"  durability: [fsync]",
         "15: error: 'engine.durability' must be one of: fsync, nosync (got a sequence)"},
        {"  [a]: 1",
         "3: error: keys must be strings (got a sequence)"},
    };
    expect_engine_value_errors(state, cases, sizeof cases / sizeof cases[0]);

    EXPECT_ERRORS(state, "version: 1\nengine: fast\n",
                  "2:9: error: 'engine' must be a mapping (got 'fast')");
    EXPECT_ERRORS(state, "version: 1\nengine:\n  - listen: 127.0.0.1:1\n",
                  "3:3: error: 'engine' must be a mapping (got a sequence)");
    EXPECT_ERRORS(state, "- version: 1\n",
                  "1:1: error: the top level must be a mapping with 'version: 1' "
                  "(got a sequence)");
    EXPECT_ERRORS(state, "hello\n",
                  "1:1: error: the top level must be a mapping with 'version: 1' "
                  "(got 'hello')");
}

static void test_topo_long_values_are_cut_in_messages(void **state)
{
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "  durability: \"0123456789012345678901234567890123456789xyz\\nmore\"\n",
                  "3:15: error: 'engine.durability' must be one of: fsync, nosync "
                  "(got '0123456789012345678901234567890123456789...')");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "  durability: \"fs\\tync\\nmore\"\n",
                  "3:15: error: 'engine.durability' must be one of: fsync, nosync "
                  "(got 'fs?ync...')");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "  data_dir: \"a\\0b\"\n",
                  "3:13: error: 'engine.data_dir' must not contain a NUL byte");
}

static void test_topo_duplicate_keys_point_at_the_second(void **state)
{
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "  listen: 127.0.0.1:1\n"
                  "  map_size: 1GiB\n"
                  "  listen: 127.0.0.1:2\n",
                  "5:3: error: duplicate key 'listen' in engine (first at line 3)");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "version: 1\n",
                  "2:1: error: duplicate key 'version' at top level (first at line 1)");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine: {x: 1, x: 2}\n",
                  "2:10: error: unknown key 'x' in engine (expected one of: data_dir, listen, "
                  "map_size, durability, max_body, wal_size, log_level)",
                  "2:16: error: duplicate key 'x' in engine (first at line 2)");
}

/* "version: 1" and a pull subscription 's' on topic a whose last key is 'filter'. */
#define SUB_WITH(filter) \
    "version: 1\nsubscriptions:\n  s:\n    topics: [a]\n    deliver: pull\n    filter: " filter

/* A duplicate key in a filter is an error, as anywhere else, in flow and block style. */
static void test_topo_filter_duplicate_keys_are_errors(void **state)
{
    EXPECT_ERRORS(state, SUB_WITH("{ exact: { subject: a, subject: b } }\n"),
                  "6:36: error: 'subscriptions.s.filter': exact: duplicate key 'subject' "
                  "(first at line 6)");
    EXPECT_ERRORS(state, SUB_WITH("\n"
                                  "      any:\n"
                                  "        - exact:\n"
                                  "            subject: a\n"
                                  "            subject: b\n"),
                  "10:13: error: 'subscriptions.s.filter': any[0].exact: duplicate key "
                  "'subject' (first at line 9)");
}

/* Null is no value: not "~", not "", and "filter: ~" is not "no filter". */
static void test_topo_filter_null_is_an_error_naming_its_path(void **state)
{
    static const char *const nulls[] = {"~", "null", "", "NULL"};
    for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++) {
        char text[200], want[200];
        snprintf(text, sizeof text, SUB_WITH("{ exact: { source: x, subject: %s } }\n"),
                 nulls[i]);
        snprintf(want, sizeof want, "6:%d: error: 'subscriptions.s.filter': exact.subject: null "
                 "is not a value here (to match an empty string, write \"\")",
                 nulls[i][0] ? 44 : 45);
        EXPECT_ERRORS(state, text, want);
    }
    EXPECT_ERRORS(state, SUB_WITH("~\n"),
                  "6:13: error: 'subscriptions.s.filter' must be a filter mapping (exact, "
                  "prefix, suffix, all, any, not) (got an empty value)");
    EXPECT_ERRORS(state, SUB_WITH("{ not: }\n"),
                  "6:20: error: 'subscriptions.s.filter': not: null is not a value here (to "
                  "match an empty string, write \"\")");
}

/* Each filter error is reported at the node at fault, not at the start of the filter. */
static void test_topo_filter_errors_point_at_the_offending_node(void **state)
{
    EXPECT_ERRORS(state, SUB_WITH("\n"
                                  "      all:\n"
                                  "        - exact: { subject: a }\n"
                                  "        - prefix:\n"
                                  "            type: b\n"
                                  "            Bad: c\n"),
                  "11:13: error: 'subscriptions.s.filter': all[1].prefix.Bad: not an attribute "
                  "name (a-z and 0-9, at most 20 bytes) nor data.<path>");
    EXPECT_ERRORS(state, SUB_WITH("\n"
                                  "      any:\n"
                                  "        - exact: { subject: a }\n"
                                  "        - exact: { subject: [b] }\n"),
                  "9:29: error: 'subscriptions.s.filter': any[1].exact.subject: expects a "
                  "string, not a list");
    EXPECT_ERRORS(state, SUB_WITH("\n"
                                  "      not:\n"
                                  "        exactly: { subject: a }\n"),
                  "8:9: error: 'subscriptions.s.filter': not: unknown dialect 'exactly' "
                  "(expected exact, prefix, suffix, all, any or not)");
    EXPECT_ERRORS(state, SUB_WITH("{ all: [] }\n"),
                  "6:20: error: 'subscriptions.s.filter': all: expects a non-empty list of "
                  "filters");
}

/* A NUL byte: refused where it could never match, kept in a data string, where it can. */
static void test_topo_filter_nul_is_refused_where_it_cannot_match(void **state)
{
    EXPECT_ERRORS(state, SUB_WITH("{ \"exact\\0junk\": { subject: a } }\n"),
                  "6:15: error: 'subscriptions.s.filter': a dialect name cannot hold a NUL byte "
                  "(expected exact, prefix, suffix, all, any or not)");
    EXPECT_ERRORS(state, SUB_WITH("{ exact: { \"subject\\0\": a } }\n"),
                  "6:24: error: 'subscriptions.s.filter': exact.subject: the attribute name "
                  "holds a NUL byte");
    EXPECT_ERRORS(state, SUB_WITH("{ exact: { tenant: \"a\\0b\" } }\n"),
                  "6:32: error: 'subscriptions.s.filter': exact.tenant: holds a NUL byte, which "
                  "no attribute can hold (only strings in data can)");
    mt_topo *t = load_ok(state, SUB_WITH("{ exact: { data.x: \"a\\0b\" } }\n"));
    json_t *spec = json_loads(t->subs[0].filter_json, JSON_ALLOW_NUL, NULL);
    json_t *x = json_object_get(json_object_get(spec, "exact"), "data.x");
    assert_int_equal(json_string_length(x), 3);
    assert_memory_equal(json_string_value(x), "a\0b", 3);
    json_decref(spec);
    mt_topo_free(t);
}

/*
 * A number or boolean in a filter stands for the text JSON data of that
 * value has, in a YAML file and a JSON definition alike; YAML-only numbers
 * and numbers or booleans where text is meant are errors.
 */
static void test_topo_filter_numbers_mean_their_json_text(void **state)
{
    static const char want[] = "{\"exact\":{\"data.b\":\"true\",\"data.f\":\"2.5\","
                               "\"data.n\":\"1000.0\",\"data.s\":\"1e3\",\"priority\":\"5\"}}";
    mt_topo *t = load_ok(state, SUB_WITH("{ exact: { priority: 5, data.n: 1e3, data.f: 2.50, "
                                         "data.b: True, data.s: \"1e3\" } }\n"));
    assert_string_equal(t->subs[0].filter_json, want);
    mt_topo_free(t);
    const char *json = "{\"topics\": [\"a\"], \"deliver\": \"pull\", \"filter\": {\"exact\": "
                       "{\"priority\": 5, \"data.n\": 1e3, \"data.f\": 2.50, \"data.b\": true, "
                       "\"data.s\": \"1e3\"}}}";
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_parse_sub("s", json, strlen(json), "request", &c, &errs), MT_OK);
    assert_string_equal(c->filter_json, want);
    mt_sub_conf_free(c);

    static const char *const yaml_only[] = {"+5", "05", "0x1F", "0o17", ".5", "5.", ".inf",
                                            "-.Inf", ".nan", "99999999999999999999"};
    for (size_t i = 0; i < sizeof yaml_only / sizeof yaml_only[0]; i++) {
        char text[200], line[300];
        snprintf(text, sizeof text, SUB_WITH("{ exact: { data.n: %s } }\n"), yaml_only[i]);
        snprintf(line, sizeof line, "6:32: error: 'subscriptions.s.filter': exact.data.n: %s is "
                 "a number JSON cannot write as it is: quote it (\"%s\") to match that text, or "
                 "write the number as JSON data has it", yaml_only[i], yaml_only[i]);
        EXPECT_ERRORS(state, text, line);
    }

    EXPECT_ERRORS(state, "version: 1\nsubscriptions:\n  s:\n    topics: [a, 5, true]\n"
                         "    deliver: pull\n",
                  "4:17: error: 'subscriptions.s.topics' must be a topic pattern: a string, not "
                  "a number (got 5; quote it to mean the text)",
                  "4:20: error: 'subscriptions.s.topics' must be a topic pattern: a string, not "
                  "a boolean (got true; quote it to mean the text)");
    const char *topics = "{\"topics\": 7, \"deliver\": \"pull\"}";
    expect_sub_error(topics, "request:/topics: error: 'subscriptions.s.topics' must be "
                     "a list of topic patterns: a string, not a number (got 7; quote it to "
                     "mean the text)");
}

/*
 * A JSON definition is read as JSON: escapes YAML does not know (a
 * surrogate pair), characters YAML refuses or alters (DEL, C1, U+FFFE,
 * U+0085) and keys over 1024 bytes all reach the filter unchanged; errors
 * are placed by JSON Pointer.
 */
static void test_topo_parse_sub_reads_json_as_json(void **state)
{
    (void) state;
    char key[1200] = "data.";
    memset(key + 5, 'k', 1100);
    key[1105] = '\0';
    char def[2000];
    snprintf(def, sizeof def, "{\"topics\": [\"a\"], \"deliver\": \"pull\", \"filter\": {\"any\": ["
             "{\"exact\": {\"subject\": \"\\ud83d\\ude00\"}}, {\"exact\": {\"subject\": "
             "\"a\x7f\xc2\x80\xc2\x85\xef\xbf\xbe\"}}, {\"exact\": {\"%s\": \"v\"}}]}}", key);
    mt_sub_conf *c = NULL;
    mt_topo_errs errs = {0};
    mt_err rc = mt_topo_parse_sub("s", def, strlen(def), "request", &c, &errs);
    print_errs(&errs);
    assert_int_equal(rc, MT_OK);
    json_t *spec = json_loads(c->filter_json, 0, NULL);
    json_t *any = json_object_get(spec, "any");
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            json_array_get(any, 0), "exact"), "subject")), "\xf0\x9f\x98\x80");
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            json_array_get(any, 1), "exact"), "subject")),
                        "a\x7f\xc2\x80\xc2\x85\xef\xbf\xbe");
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            json_array_get(any, 2), "exact"), key)), "v");
    json_decref(spec);
    mt_sub_conf_free(c);

    const char *bad = "{\"topics\": [\"a\"], \"deliver\": \"pull\", \"filter\": {\"all\": ["
                      "{\"exact\": {\"subject\": \"a\"}}, {\"prefix\": {\"a/b~c\": \"x\"}}]}}";
    expect_sub_error(bad, "request:/filter/all/1/prefix/a~1b~0c: error: "
                     "'subscriptions.s.filter': all[1].prefix.a/b~c: not an attribute name "
                     "(a-z and 0-9, at most 20 bytes) nor data.<path>");
    const char *null = "{\"topics\": [\"a\"], \"deliver\": \"pull\", \"filter\": {\"exact\": "
                       "{\"subject\": null}}}";
    expect_sub_error(null, "request:/filter/exact/subject: error: "
                     "'subscriptions.s.filter': exact.subject: null is not a value here (to "
                     "match an empty string, write \"\")");
}

static void test_topo_missing_version(void **state)
{
    /* Reported at the top mapping, so it comes before the errors inside it. */
    EXPECT_ERRORS(state,
                  "# no version\n"
                  "engine:\n"
                  "  durability: sometimes\n",
                  "2:1: error: missing required key 'version' at top level",
                  "3:15: error: 'engine.durability' must be one of: fsync, nosync "
                  "(got 'sometimes')");
}

static void test_topo_wrong_version(void **state)
{
    EXPECT_ERRORS(state, "version: 2\n",
                  "1:10: error: unsupported version 2; this engine reads version 1");
    EXPECT_ERRORS(state, "version: 0\n",
                  "1:10: error: unsupported version 0; this engine reads version 1");
    EXPECT_ERRORS(state, "version: \"1\"\n",
                  "1:10: error: 'version' must be the integer 1, not a quoted string "
                  "(got '1')");
    EXPECT_ERRORS(state, "version: one\n",
                  "1:10: error: 'version' must be the integer 1 (got 'one')");
    EXPECT_ERRORS(state, "version: 1.0\n",
                  "1:10: error: 'version' must be the integer 1 (got '1.0')");
    EXPECT_ERRORS(state, "version:\n",
                  "1:9: error: 'version' must be the integer 1 (got an empty value)");
    EXPECT_ERRORS(state, "version: [1]\n",
                  "1:10: error: 'version' must be the integer 1 (got a sequence)");
}

static void test_topo_empty_file(void **state)
{
    static const char *const texts[] = {"", "\n\n", "# only a comment\n", "---\n", "~\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        EXPECT_ERRORS(state, texts[i],
                      "1:1: error: empty topology file; expected a mapping with 'version: 1'");
    }
}

static void test_topo_second_document_is_an_error(void **state)
{
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "---\n"
                  "engine: {}\n",
                  "2:1: error: a topology file holds one YAML document; found a second one");
}

static void test_topo_yaml_syntax_error_has_position(void **state)
{
    (void) state;
    char *path = fixture("syntax_error.yaml");
    expect_file_errors(path, MT_ECONFIG, (const char *const[]){
        "5:15: error: mapping values are not allowed in this context", NULL});
    free(path);

    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "  data_dir: \"./data\n",
                  "4:1: error: found unexpected end of stream");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine:\n"
                  "\tlisten: 127.0.0.1:1\n",
                  "3:1: error: found character that cannot start any token");
    EXPECT_ERRORS(state,
                  "version: 1\n"
                  "engine: *nowhere\n",
                  "2:9: error: found undefined alias");
}

static void test_topo_invalid_utf8_has_position(void **state)
{
    (void) state;
    char *path = fixture("bad_utf8.yaml");
    expect_file_errors(path, MT_ECONFIG, (const char *const[]){
        "3:16: error: invalid leading UTF-8 octet (byte 0xFF)", NULL});
    free(path);
}

static void test_topo_unreadable_file(void **state)
{
    char *missing = malloc(strlen(*state) + 32);
    assert_non_null(missing);
    sprintf(missing, "%s/no-such.yaml", (char *) *state);
    mt_topo *t = (mt_topo *) &t;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_load(missing, &t, &errs), MT_EIO);
    assert_null(t);
    assert_int_equal(errs.count, 1);
    char want[600];
    snprintf(want, sizeof want, "%s: error: cannot open: No such file or directory", missing);
    assert_string_equal(errs.lines[0], want);
    mt_topo_errs_free(&errs);
    free(missing);

    /* A directory opens but cannot be read. */
    t = (mt_topo *) &t;
    assert_int_equal(mt_topo_load(*state, &t, &errs), MT_EIO);
    assert_null(t);
    assert_int_equal(errs.count, 1);
    snprintf(want, sizeof want, "%s: error: cannot read: Is a directory", (char *) *state);
    assert_string_equal(errs.lines[0], want);
    mt_topo_errs_free(&errs);
}

static void test_topo_huge_file_is_refused(void **state)
{
    char *path = mt_test_write_file(*state, "huge.yaml", "version: 1\n");
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    static char comment[1024];
    memset(comment, '#', sizeof comment - 1);
    comment[sizeof comment - 2] = '\n';
    for (int i = 0; i < 17 * 1024; i++) {
        fputs(comment, f);
    }
    fclose(f);
    mt_topo *t = (mt_topo *) &t;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_load(path, &t, &errs), MT_ECONFIG);
    assert_null(t);
    assert_int_equal(errs.count, 1);
    char want[600];
    snprintf(want, sizeof want,
             "%s: error: file is larger than 16MiB; a topology file is expected to be small",
             path);
    assert_string_equal(errs.lines[0], want);
    mt_topo_errs_free(&errs);
    free(path);
}

static void test_topo_errs_are_appended_and_reusable(void **state)
{
    char *bad = mt_test_write_file(*state, "bad.yaml", "version: 3\n");
    char *good = mt_test_write_file(*state, "good.yaml", "version: 1\n");
    mt_topo *t = NULL;
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_load(bad, &t, &errs), MT_ECONFIG);
    assert_int_equal(mt_topo_load(bad, &t, &errs), MT_ECONFIG);
    assert_int_equal(errs.count, 2);
    assert_string_equal(errs.lines[0], errs.lines[1]);
    mt_topo_errs_free(&errs);
    assert_null(errs.lines);
    assert_int_equal(errs.count, 0);
    mt_topo_errs_free(&errs);
    mt_topo_errs_free(NULL);

    assert_int_equal(mt_topo_load(good, &t, &errs), MT_OK);
    assert_int_equal(errs.count, 0);
    mt_topo_free(t);
    free(bad);
    free(good);
}

/* ---- listen addresses ---- */

typedef struct listen_case {
    const char *in;
    mt_err rc;
    const char *host;       /* expected on MT_OK */
    uint16_t port;
} listen_case;

static void test_topo_listen_parsing(void **state)
{
    (void) state;
    static const listen_case cases[] = {
        {"127.0.0.1:8080", MT_OK, "127.0.0.1", 8080},
        {"localhost:0", MT_OK, "localhost", 0},
        {"[::1]:9000", MT_OK, "::1", 9000},
        {"[fe80::1%eth0]:65535", MT_OK, "fe80::1%eth0", 65535},
        {"example.com:443", MT_OK, "example.com", 443},
        {"0.0.0.0:1", MT_OK, "0.0.0.0", 1},
        {"localhost", MT_EINVAL, NULL, 0},
        {"localhost:", MT_EINVAL, NULL, 0},
        {":8080", MT_EINVAL, NULL, 0},
        {"[]:8080", MT_EINVAL, NULL, 0},
        {"[::1]", MT_EINVAL, NULL, 0},
        {"[::1]8080", MT_EINVAL, NULL, 0},
        {"[::1:8080", MT_EINVAL, NULL, 0},
        {"::1:8080", MT_EINVAL, NULL, 0},
        {"host:http", MT_EINVAL, NULL, 0},
        {"host:65536", MT_EINVAL, NULL, 0},
        {"host:-1", MT_EINVAL, NULL, 0},
        {"host:+80", MT_EINVAL, NULL, 0},
        {"host: 80", MT_EINVAL, NULL, 0},
        {"host:80 ", MT_EINVAL, NULL, 0},
        {"host:99999999999999999999999", MT_EINVAL, NULL, 0},
        {"", MT_EINVAL, NULL, 0},
        {NULL, MT_EINVAL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *host = (char *) &host;
        uint16_t port = 1234;
        mt_err rc = mt_topo_parse_listen(cases[i].in, &host, &port);
        if (rc != cases[i].rc) {
            print_error("listen '%s': got %s\n", cases[i].in ? cases[i].in : "(null)",
                        mt_err_str(rc));
        }
        assert_int_equal(rc, cases[i].rc);
        if (rc == MT_OK) {
            assert_string_equal(host, cases[i].host);
            assert_int_equal(port, cases[i].port);
            free(host);
        } else {
            assert_null(host);
            assert_int_equal(port, 0);
        }
    }
}

#define T(f) cmocka_unit_test_setup_teardown(f, mt_test_setup_dir, mt_test_teardown_dir)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topo_new_default_has_every_default),
        T(test_topo_defaults_fill_missing_keys),
        T(test_topo_empty_engine_section_means_defaults),
        cmocka_unit_test(test_topo_reads_every_engine_key),
        T(test_topo_accepts_quoted_and_flow_values),
        T(test_topo_stored_fixed_reads_what_a_put_may_not_change),
        cmocka_unit_test(test_topo_loads_shipped_default_config),
        cmocka_unit_test(test_topo_reports_every_error_in_one_pass),
        T(test_topo_unknown_key_names_line_and_column),
        T(test_topo_reserved_sections_are_refused_by_name),
        cmocka_unit_test(test_topo_reads_a_subscription_with_defaults_and_every_key),
        T(test_topo_subscription_errors_name_line_and_column),
        T(test_topo_bad_sizes_name_key_and_range),
        T(test_topo_bad_choices_list_the_allowed_values),
        T(test_topo_bad_listen_gives_the_reason),
        T(test_topo_wrong_type),
        T(test_topo_long_values_are_cut_in_messages),
        T(test_topo_duplicate_keys_point_at_the_second),
        T(test_topo_filter_duplicate_keys_are_errors),
        T(test_topo_filter_null_is_an_error_naming_its_path),
        T(test_topo_filter_errors_point_at_the_offending_node),
        T(test_topo_filter_nul_is_refused_where_it_cannot_match),
        T(test_topo_filter_numbers_mean_their_json_text),
        T(test_topo_missing_version),
        T(test_topo_wrong_version),
        T(test_topo_empty_file),
        T(test_topo_second_document_is_an_error),
        T(test_topo_yaml_syntax_error_has_position),
        cmocka_unit_test(test_topo_invalid_utf8_has_position),
        T(test_topo_unreadable_file),
        T(test_topo_huge_file_is_refused),
        T(test_topo_errs_are_appended_and_reusable),
        cmocka_unit_test(test_topo_listen_parsing),
        T(test_topo_small_files_with_huge_expansions_are_refused),
        cmocka_unit_test(test_topo_parse_sub_from_json),
        cmocka_unit_test(test_topo_parse_sub_reads_json_as_json),
        cmocka_unit_test(test_topo_parse_sub_keeps_handlers_in_the_project),
        cmocka_unit_test(test_topo_parse_stored_sub_allows_a_missing_handler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

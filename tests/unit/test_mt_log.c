/*
 * test_mt_log.c - the event log on a real store: contiguous sequences and
 * stream versions, expected-version checks, deduplication, atomic batches,
 * paged reads of the log and of one stream, durability across reopen and
 * across a lost LMDB state (write-ahead replay), and a full map. Also the
 * store's own contract where the log relies on it: done callbacks and
 * notification, jobs failing alone inside one group, savepoints, and the
 * data directory lock.
 *
 * Appends run as the engine runs them: a job on the store's writer thread
 * calls mt_log_append inside the group's write transaction.
 */
#include "mt_test.h"
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>
#include "mt_datacache.h"
#include "mt_event.h"
#include "mt_log.h"
#include "mt_store.h"
#include "mt_util.h"

#define MIB (1ULL << 20)
#define MAX_BATCH 64
#define MAX_GOT 512

static mt_store *open_store_sized(const char *dir, uint64_t map_size)
{
    /* Checkpoints only when asked for or forced, so that the tests can count them. */
    mt_store_opts o = {.dir = dir, .map_size = map_size, .wal_size = MIB, .nosync = false,
                       .checkpoint_interval_us = 3600 * 1000000LL};
    mt_store *s = NULL;
    mt_err rc = mt_store_open(&o, &s);
    if (rc) {
        print_error("mt_store_open('%s'): %s\n", dir, mt_err_str(rc));
    }
    assert_int_equal(rc, MT_OK);
    assert_non_null(s);
    return s;
}

static mt_store *open_store(void **state)
{
    return open_store_sized(*state, 64 * MIB);
}

/* ---- building events ---- */

/* Adds one event; 'subject' may be NULL; 'data' is JSON text or NULL. */
static void add_event_data(mt_event_batch *b, const char *source, const char *id,
                           const char *subject, const char *data)
{
    mt_buf json;
    mt_buf_init(&json);
    mt_buf_addf(&json, "{\"specversion\":\"1.0\",\"source\":\"%s\",\"id\":\"%s\",\"type\":\"t.e\"",
                source, id);
    if (subject) {
        mt_buf_addf(&json, ",\"subject\":\"%s\"", subject);
    }
    if (data) {
        mt_buf_addf(&json, ",\"data\":%s", data);
    }
    mt_buf_adds(&json, "}");
    char err[256] = "";
    mt_err rc = mt_event_parse_structured(json.data, json.len, b, err, sizeof err);
    if (rc) {
        print_error("bad test event %s: %s\n", mt_buf_cstr(&json), err);
    }
    assert_int_equal(rc, MT_OK);
    mt_buf_free(&json);
}

static void add_event(mt_event_batch *b, const char *source, const char *id, const char *subject)
{
    add_event_data(b, source, id, subject, NULL);
}

/* ---- appending through the store ---- */

typedef struct append_job {
    mt_event_batch *b;
    const mt_expect *expect;       /* NULL = any */
    mt_log_result results[MAX_BATCH];
    int64_t current;
    mt_err log_rc;                 /* what mt_log_append returned */
    mt_err fail_after;             /* returned by the job after a successful append */
} append_job;

static mt_err run_append(mt_txn *t, void *arg)
{
    append_job *j = arg; /* on the writer thread: no cmocka assertions here */
    j->current = 12345;
    j->log_rc = mt_log_append(t, j->b, j->expect, j->results, &j->current);
    if (j->log_rc) {
        return j->log_rc;
    }
    return j->fail_after;
}

/* Appends 'b' in one job and returns the job's outcome. */
static mt_err append_batch(mt_store *s, mt_event_batch *b, const mt_expect *expect,
                           append_job *j)
{
    assert_true(b->count <= MAX_BATCH);
    memset(j, 0, sizeof *j);
    j->b = b;
    j->expect = expect;
    return mt_store_write(s, run_append, j);
}

/* Appends one event that must succeed; returns its result. */
static mt_log_result append_one(mt_store *s, const char *source, const char *id,
                                const char *subject)
{
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, source, id, subject);
    append_job j;
    mt_err rc = append_batch(s, &b, NULL, &j);
    if (rc) {
        print_error("append %s/%s: %s\n", source, id, mt_err_str(rc));
    }
    assert_int_equal(rc, MT_OK);
    mt_event_batch_free(&b);
    return j.results[0];
}

/* ---- reading ---- */

typedef struct got_event {
    uint64_t seq;
    uint64_t sv;
    int64_t recorded;
    char id[64];
    char source[64];
    char subject[64];   /* "" when absent */
    mt_data_kind kind;
    size_t data_len;
    uint8_t data_head[8];
} got_event;

typedef struct got {
    int n;
    got_event ev[MAX_GOT];
    int stop_at;        /* 1-based visit that returns stop_value; 0 = never */
    int stop_value;
} got;

static int collect(const mt_event *ev, void *arg)
{
    got *g = arg;
    assert_true(g->n < MAX_GOT);
    got_event *e = &g->ev[g->n++];
    memset(e, 0, sizeof *e);
    e->seq = ev->sequence;
    e->sv = ev->streamversion;
    e->recorded = ev->recordedtime_us;
    snprintf(e->id, sizeof e->id, "%s", ev->attr[MT_ATTR_ID]);
    snprintf(e->source, sizeof e->source, "%s", ev->attr[MT_ATTR_SOURCE]);
    snprintf(e->subject, sizeof e->subject, "%s",
             ev->attr[MT_ATTR_SUBJECT] ? ev->attr[MT_ATTR_SUBJECT] : "");
    e->kind = ev->data_kind;
    e->data_len = ev->data_len;
    memcpy(e->data_head, ev->data, ev->data_len < 8 ? ev->data_len : 8);
    if (g->stop_at && g->n == g->stop_at) {
        return g->stop_value;
    }
    return 0;
}

static int read_log(mt_store *s, uint64_t after, uint64_t limit, got *g)
{
    memset(g, 0, sizeof *g);
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    int rc = mt_log_read(t, after, limit, collect, g);
    mt_store_read_end(t);
    assert_int_equal(rc, 0);
    return g->n;
}

static int read_stream(mt_store *s, const char *subject, uint64_t from, uint64_t limit, got *g)
{
    memset(g, 0, sizeof *g);
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    int rc = mt_log_read_stream(t, subject, from, limit, collect, g);
    mt_store_read_end(t);
    assert_int_equal(rc, 0);
    return g->n;
}

static uint64_t log_head(mt_store *s)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    uint64_t seq = 12345;
    assert_int_equal(mt_log_head(t, &seq), MT_OK);
    mt_store_read_end(t);
    return seq;
}

/* The stream head: -1 when the subject has no events. */
static int64_t stream_head(mt_store *s, const char *subject)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    bool exists = true;
    uint64_t v = 12345;
    assert_int_equal(mt_log_stream_head(t, subject, &exists, &v), MT_OK);
    mt_store_read_end(t);
    if (!exists) {
        assert_int_equal(v, 0);
        return -1;
    }
    return (int64_t) v;
}

/* Checks the whole log holds sequences 1..n, in order, with these ids. */
static void expect_log_ids(mt_store *s, const char *const *ids, int n)
{
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    int count = read_log(s, 0, UINT64_MAX, g);
    if (count != n) {
        print_error("log holds %d events, want %d\n", count, n);
        for (int i = 0; i < count; i++) {
            print_error("  %llu: %s\n", (unsigned long long) g->ev[i].seq, g->ev[i].id);
        }
        fail();
    }
    for (int i = 0; i < n; i++) {
        assert_int_equal(g->ev[i].seq, (uint64_t) i + 1);
        assert_string_equal(g->ev[i].id, ids[i]);
    }
    free(g);
    assert_int_equal(log_head(s), (uint64_t) n);
}

/* ---- sequences and stream versions ---- */

static void test_log_sequences_are_contiguous_from_one(void **state)
{
    mt_store *s = open_store(state);
    assert_int_equal(log_head(s), 0);

    int64_t before = mt_now_us();
    static const int sizes[] = {1, 3, 2};
    int next = 1;
    char id[16];
    for (size_t k = 0; k < 3; k++) {
        mt_event_batch b;
        mt_event_batch_init(&b);
        for (int i = 0; i < sizes[k]; i++) {
            snprintf(id, sizeof id, "e%d", next + i);
            add_event(&b, "/src", id, NULL);
        }
        append_job j;
        assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
        assert_int_equal(j.log_rc, MT_OK);
        assert_int_equal(j.current, -1);
        for (int i = 0; i < sizes[k]; i++) {
            assert_int_equal(j.results[i].sequence, (uint64_t) (next + i));
            assert_false(j.results[i].duplicate);
            assert_false(j.results[i].has_subject);
        }
        next += sizes[k];
        mt_event_batch_free(&b);
    }
    int64_t after = mt_now_us();

    static const char *const ids[] = {"e1", "e2", "e3", "e4", "e5", "e6"};
    expect_log_ids(s, ids, 6);

    /* Each event carries its position and the time the log recorded it. */
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    assert_int_equal(read_log(s, 0, 100, g), 6);
    for (int i = 0; i < 6; i++) {
        assert_true(g->ev[i].recorded >= before && g->ev[i].recorded <= after);
        assert_int_equal(g->ev[i].sv, 0);
        assert_string_equal(g->ev[i].subject, "");
    }
    /* One batch, one recorded time. */
    assert_int_equal(g->ev[1].recorded, g->ev[2].recorded);
    assert_int_equal(g->ev[2].recorded, g->ev[3].recorded);
    free(g);
    mt_store_close(s);
}

static void test_log_streamversions_count_per_subject_from_zero(void **state)
{
    mt_store *s = open_store(state);
    static const struct {
        const char *subject;
        uint64_t sv;
    } seq[] = {{"a", 0}, {"b", 0}, {"a", 1}, {NULL, 0}, {"a", 2}, {"b", 1}, {"ab", 0}};
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        char id[16];
        snprintf(id, sizeof id, "e%zu", i);
        mt_log_result r = append_one(s, "/src", id, seq[i].subject);
        assert_int_equal(r.sequence, i + 1);
        assert_int_equal(r.has_subject, seq[i].subject != NULL);
        assert_int_equal(r.streamversion, seq[i].sv);
    }
    assert_int_equal(stream_head(s, "a"), 2);
    assert_int_equal(stream_head(s, "b"), 1);
    assert_int_equal(stream_head(s, "ab"), 0);
    assert_int_equal(stream_head(s, "c"), -1);

    /* Within one batch too. */
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "x1", "b");
    add_event(&b, "/src", "x2", "c");
    add_event(&b, "/src", "x3", "b");
    append_job j;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    assert_int_equal(j.results[0].streamversion, 2);
    assert_int_equal(j.results[1].streamversion, 0);
    assert_int_equal(j.results[2].streamversion, 3);
    assert_int_equal(j.results[2].sequence, 10);
    mt_event_batch_free(&b);

    /* The stored records carry the same positions. */
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    assert_int_equal(read_stream(s, "b", 0, 100, g), 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(g->ev[i].sv, (uint64_t) i);
        assert_string_equal(g->ev[i].subject, "b");
    }
    assert_int_equal(g->ev[0].seq, 2);
    assert_int_equal(g->ev[1].seq, 6);
    assert_int_equal(g->ev[2].seq, 8);
    assert_int_equal(g->ev[3].seq, 10);
    free(g);
    mt_store_close(s);
}

/* ---- expected versions ---- */

typedef struct expect_case {
    int existing;            /* events already in the stream */
    mt_expect expect;
    mt_err rc;
    int64_t current;         /* on MT_ECONFLICT */
} expect_case;

static void test_log_expected_version_success_and_conflict(void **state)
{
    mt_store *s = open_store(state);
    static const expect_case cases[] = {
        {0, {MT_EXPECT_ANY, 0}, MT_OK, 0},
        {2, {MT_EXPECT_ANY, 0}, MT_OK, 0},
        {0, {MT_EXPECT_NO_STREAM, 0}, MT_OK, 0},
        {1, {MT_EXPECT_NO_STREAM, 0}, MT_ECONFLICT, 0},
        {3, {MT_EXPECT_NO_STREAM, 0}, MT_ECONFLICT, 2},
        {1, {MT_EXPECT_EXISTS, 0}, MT_OK, 0},
        {4, {MT_EXPECT_EXISTS, 0}, MT_OK, 0},
        {0, {MT_EXPECT_EXISTS, 0}, MT_ECONFLICT, -1},
        {1, {MT_EXPECT_VERSION, 0}, MT_OK, 0},
        {3, {MT_EXPECT_VERSION, 2}, MT_OK, 0},
        {3, {MT_EXPECT_VERSION, 1}, MT_ECONFLICT, 2},
        {3, {MT_EXPECT_VERSION, 3}, MT_ECONFLICT, 2},
        {0, {MT_EXPECT_VERSION, 0}, MT_ECONFLICT, -1},
        {2, {MT_EXPECT_VERSION, 5}, MT_ECONFLICT, 1},
    };
    int total = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char subject[32], id[48];
        snprintf(subject, sizeof subject, "stream-%zu", i);
        for (int k = 0; k < cases[i].existing; k++) {
            snprintf(id, sizeof id, "%s-%d", subject, k);
            append_one(s, "/src", id, subject);
            total++;
        }
        mt_event_batch b;
        mt_event_batch_init(&b);
        snprintf(id, sizeof id, "%s-new", subject);
        add_event(&b, "/src", id, subject);
        append_job j;
        mt_err rc = append_batch(s, &b, &cases[i].expect, &j);
        if (rc != cases[i].rc) {
            print_error("case %zu: got %s, want %s\n", i, mt_err_str(rc),
                        mt_err_str(cases[i].rc));
            fail();
        }
        if (rc == MT_OK) {
            total++;
            assert_int_equal(j.results[0].sequence, (uint64_t) total);
            assert_int_equal(j.results[0].streamversion, (uint64_t) cases[i].existing);
            assert_int_equal(j.current, -1);
        } else {
            assert_int_equal(j.log_rc, MT_ECONFLICT);
            assert_int_equal(j.current, cases[i].current);
        }
        /* Nothing is appended on a conflict. */
        assert_int_equal(log_head(s), (uint64_t) total);
        assert_int_equal(stream_head(s, subject),
                         cases[i].existing - 1 + (rc == MT_OK ? 1 : 0));
        mt_event_batch_free(&b);
    }
    mt_store_close(s);
}

static void test_log_expected_version_checks_once_for_a_whole_batch(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "s-0", "s");
    append_one(s, "/src", "s-1", "s");

    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "s-2", "s");
    add_event(&b, "/src", "s-3", "s");
    add_event(&b, "/src", "s-4", "s");
    const mt_expect v1 = {MT_EXPECT_VERSION, 1};
    append_job j;
    assert_int_equal(append_batch(s, &b, &v1, &j), MT_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(j.results[i].streamversion, (uint64_t) i + 2);
        assert_int_equal(j.results[i].sequence, (uint64_t) i + 3);
    }
    mt_event_batch_free(&b);

    /* A conflicting batch appends none of its events. */
    mt_event_batch_init(&b);
    add_event(&b, "/src", "s-5", "s");
    add_event(&b, "/src", "s-6", "s");
    assert_int_equal(append_batch(s, &b, &v1, &j), MT_ECONFLICT);
    assert_int_equal(j.current, 4);
    assert_int_equal(log_head(s), 5);
    assert_int_equal(stream_head(s, "s"), 4);
    mt_event_batch_free(&b);
    mt_store_close(s);
}

static void test_log_expect_needs_one_common_subject(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "first", "s");
    static const mt_expect expects[] = {
        {MT_EXPECT_NO_STREAM, 0}, {MT_EXPECT_EXISTS, 0}, {MT_EXPECT_VERSION, 0}};
    static const char *const subjects[][2] = {{"s", "t"}, {"s", NULL}, {NULL, "s"},
                                              {NULL, NULL}};
    for (size_t e = 0; e < 3; e++) {
        for (size_t k = 0; k < 4; k++) {
            mt_event_batch b;
            mt_event_batch_init(&b);
            add_event(&b, "/src", "m1", subjects[k][0]);
            add_event(&b, "/src", "m2", subjects[k][1]);
            append_job j;
            assert_int_equal(append_batch(s, &b, &expects[e], &j), MT_EINVAL);
            assert_int_equal(j.log_rc, MT_EINVAL);
            assert_int_equal(j.current, -1);
            mt_event_batch_free(&b);
        }
        /* A single event without a subject cannot be checked either. */
        mt_event_batch b;
        mt_event_batch_init(&b);
        add_event(&b, "/src", "m1", NULL);
        append_job j;
        assert_int_equal(append_batch(s, &b, &expects[e], &j), MT_EINVAL);
        mt_event_batch_free(&b);
    }
    assert_int_equal(log_head(s), 1);

    /* Without a check, mixed subjects are fine. */
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "m1", "s");
    add_event(&b, "/src", "m2", "t");
    add_event(&b, "/src", "m3", NULL);
    const mt_expect any = {MT_EXPECT_ANY, 0};
    append_job j;
    assert_int_equal(append_batch(s, &b, &any, &j), MT_OK);
    assert_int_equal(log_head(s), 4);
    mt_event_batch_free(&b);
    mt_store_close(s);
}

static void test_log_parse_expect(void **state)
{
    (void) state;
    static const struct {
        const char *in;
        mt_err rc;
        mt_expect_kind kind;
        uint64_t version;
    } cases[] = {
        {"any", MT_OK, MT_EXPECT_ANY, 0},
        {"no_stream", MT_OK, MT_EXPECT_NO_STREAM, 0},
        {"exists", MT_OK, MT_EXPECT_EXISTS, 0},
        {"0", MT_OK, MT_EXPECT_VERSION, 0},
        {"42", MT_OK, MT_EXPECT_VERSION, 42},
        {"18446744073709551615", MT_OK, MT_EXPECT_VERSION, UINT64_MAX},
        {"-1", MT_EINVAL, MT_EXPECT_ANY, 0},
        {"ANY", MT_EINVAL, MT_EXPECT_ANY, 0},
        {"", MT_EINVAL, MT_EXPECT_ANY, 0},
        {"1.0", MT_EINVAL, MT_EXPECT_ANY, 0},
        {"18446744073709551616", MT_EINVAL, MT_EXPECT_ANY, 0},
        {NULL, MT_EINVAL, MT_EXPECT_ANY, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_expect e = {MT_EXPECT_EXISTS, 7};
        assert_int_equal(mt_log_parse_expect(cases[i].in, &e), cases[i].rc);
        assert_int_equal(e.kind, cases[i].kind);
        assert_int_equal(e.version, cases[i].version);
    }
}

/* ---- deduplication ---- */

static void test_log_duplicate_source_and_id_returns_the_original(void **state)
{
    mt_store *s = open_store(state);
    mt_log_result r = append_one(s, "/a", "1", "s");
    assert_int_equal(r.sequence, 1);
    append_one(s, "/a", "2", "s");

    /* The same (source, id) again, even with another subject and data. */
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event_data(&b, "/a", "1", "other", "{\"changed\":true}");
    append_job j;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    assert_true(j.results[0].duplicate);
    assert_int_equal(j.results[0].sequence, 1);
    assert_true(j.results[0].has_subject);
    assert_int_equal(j.results[0].streamversion, 0);
    mt_event_batch_free(&b);
    assert_int_equal(log_head(s), 2);
    assert_int_equal(stream_head(s, "other"), -1);

    /* Same id, other source: a new event. Same source, other id: new too. */
    r = append_one(s, "/b", "1", NULL);
    assert_false(r.duplicate);
    assert_int_equal(r.sequence, 3);
    r = append_one(s, "/a", "3", NULL);
    assert_false(r.duplicate);
    assert_int_equal(r.sequence, 4);

    /* The duplicate of an event without a subject says so. */
    r = append_one(s, "/b", "1", "s");
    assert_true(r.duplicate);
    assert_int_equal(r.sequence, 3);
    assert_false(r.has_subject);

    /* Ids are compared exactly: no prefix or case folding. */
    assert_false(append_one(s, "/a", "1 ", NULL).duplicate);
    assert_false(append_one(s, "/A", "1", NULL).duplicate);
    assert_false(append_one(s, "/a/", "1", NULL).duplicate);
    assert_int_equal(log_head(s), 7);
    mt_store_close(s);
}

static void test_log_duplicate_within_one_batch(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "old", "s");

    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "x", "s");
    add_event(&b, "/src", "y", "s");
    add_event(&b, "/src", "x", "s");
    add_event(&b, "/src", "old", "s");
    add_event(&b, "/src", "z", NULL);
    append_job j;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    static const struct {
        bool dup;
        uint64_t seq;
        uint64_t sv;
    } want[] = {{false, 2, 1}, {false, 3, 2}, {true, 2, 1}, {true, 1, 0}, {false, 4, 0}};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(j.results[i].duplicate, want[i].dup);
        assert_int_equal(j.results[i].sequence, want[i].seq);
        assert_int_equal(j.results[i].streamversion, want[i].sv);
    }
    mt_event_batch_free(&b);
    static const char *const ids[] = {"old", "x", "y", "z"};
    expect_log_ids(s, ids, 4);
    assert_int_equal(stream_head(s, "s"), 2);
    mt_store_close(s);
}

static void test_log_duplicates_never_fail_the_expected_version(void **state)
{
    mt_store *s = open_store(state);
    const mt_expect no_stream = {MT_EXPECT_NO_STREAM, 0};
    const mt_expect v0 = {MT_EXPECT_VERSION, 0};

    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "e1", "s");
    append_job j;
    assert_int_equal(append_batch(s, &b, &no_stream, &j), MT_OK);
    /* A retry of the same append succeeds: it is a duplicate, not a conflict. */
    assert_int_equal(append_batch(s, &b, &no_stream, &j), MT_OK);
    assert_true(j.results[0].duplicate);
    assert_int_equal(j.results[0].sequence, 1);
    mt_event_batch_free(&b);

    /* The check is made at the first new event. */
    mt_event_batch_init(&b);
    add_event(&b, "/src", "e1", "s");
    add_event(&b, "/src", "e2", "s");
    assert_int_equal(append_batch(s, &b, &v0, &j), MT_OK);
    assert_true(j.results[0].duplicate);
    assert_false(j.results[1].duplicate);
    assert_int_equal(j.results[1].streamversion, 1);
    mt_event_batch_free(&b);

    mt_event_batch_init(&b);
    add_event(&b, "/src", "e1", "s");
    add_event(&b, "/src", "e3", "s");
    assert_int_equal(append_batch(s, &b, &no_stream, &j), MT_ECONFLICT);
    assert_int_equal(j.current, 1);
    mt_event_batch_free(&b);
    assert_int_equal(log_head(s), 2);
    mt_store_close(s);
}

/* ---- atomic batches ---- */

static void test_log_failed_job_leaves_nothing_behind(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "before", "s");

    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "a", "s");
    add_event(&b, "/src", "b", "t");
    add_event(&b, "/src", "c", NULL);
    append_job j;
    memset(&j, 0, sizeof j);
    j.b = &b;
    j.fail_after = MT_EINVAL;
    assert_int_equal(mt_store_write(s, run_append, &j), MT_EINVAL);
    assert_int_equal(j.log_rc, MT_OK); /* the append itself went through... */
    mt_event_batch_free(&b);

    /* ...and was undone with its job: log, streams, heads and ids. */
    assert_int_equal(log_head(s), 1);
    assert_int_equal(stream_head(s, "s"), 0);
    assert_int_equal(stream_head(s, "t"), -1);
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    assert_int_equal(read_stream(s, "t", 0, 10, g), 0);
    free(g);
    mt_log_result r = append_one(s, "/src", "a", "s");
    assert_false(r.duplicate);
    assert_int_equal(r.sequence, 2);
    assert_int_equal(r.streamversion, 1);
    static const char *const ids[] = {"before", "a"};
    expect_log_ids(s, ids, 2);
    mt_store_close(s);
}

/* ---- reading ---- */

static void test_log_read_pages_with_after_and_limit(void **state)
{
    mt_store *s = open_store(state);
    for (int i = 1; i <= 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "e%d", i);
        append_one(s, "/src", id, i % 2 ? "odd" : "even");
    }
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    static const struct {
        uint64_t after, limit;
        int n;
        uint64_t first;
    } pages[] = {
        {0, 3, 3, 1}, {3, 3, 3, 4}, {6, 3, 3, 7}, {9, 3, 1, 10}, {10, 3, 0, 0},
        {0, 100, 10, 1}, {0, UINT64_MAX, 10, 1}, {5, 1, 1, 6}, {0, 0, 0, 0},
        {1000, 10, 0, 0}, {UINT64_MAX, 10, 0, 0}, {UINT64_MAX - 1, 10, 0, 0},
    };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        int n = read_log(s, pages[i].after, pages[i].limit, g);
        if (n != pages[i].n) {
            print_error("after %llu limit %llu: %d events, want %d\n",
                        (unsigned long long) pages[i].after,
                        (unsigned long long) pages[i].limit, n, pages[i].n);
            fail();
        }
        for (int k = 0; k < n; k++) {
            assert_int_equal(g->ev[k].seq, pages[i].first + (uint64_t) k);
            char id[16];
            snprintf(id, sizeof id, "e%llu", (unsigned long long) g->ev[k].seq);
            assert_string_equal(g->ev[k].id, id);
        }
    }

    /* The visitor can stop the read; its value is returned. */
    memset(g, 0, sizeof *g);
    g->stop_at = 2;
    g->stop_value = 7;
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    assert_int_equal(mt_log_read(t, 0, 100, collect, g), 7);
    assert_int_equal(g->n, 2);
    memset(g, 0, sizeof *g);
    g->stop_at = 1;
    g->stop_value = -5;
    assert_int_equal(mt_log_read_stream(t, "odd", 0, 100, collect, g), -5);
    assert_int_equal(g->n, 1);
    mt_store_read_end(t);
    free(g);
    mt_store_close(s);
}

static mt_err run_index_streams(mt_txn *t, void *arg)
{
    (void) arg;
    return mt_log_index_streams(t);
}

/* Brings the stream index up to the log's head, in a job of its own. */
static void index_streams(mt_store *s)
{
    assert_int_equal(mt_store_write(s, run_index_streams, NULL), MT_OK);
}

/* How many entries the stream index itself holds. */
static int stream_index_entries(mt_store *s)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    mt_cursor *c;
    assert_int_equal(mt_store_cursor_open(t, MT_DB_STREAMS, &c), MT_OK);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    for (mt_err rc = mt_store_cursor_seek(c, "", 0, &k, &kl, &v, &vl); rc == MT_OK;
         rc = mt_store_cursor_next(c, &k, &kl, &v, &vl)) {
        n++;
    }
    mt_store_cursor_close(c);
    mt_store_read_end(t);
    return n;
}

/* Subjects that sort next to each other, one a prefix of the others. */
static const char *const stream_subjects[] = {"a", "ab", "a.b", "a", "b", "a", "ab", "a b", "a"};

static void append_stream_subjects(mt_store *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        char id[16];
        snprintf(id, sizeof id, "e%zu", i + 1);
        append_one(s, "/src", id, stream_subjects[i]);
    }
}

/* The reads of test_log_read_stream_stays_in_its_subject, whatever part is indexed. */
static void check_stream_reads(mt_store *s)
{
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    assert_int_equal(read_stream(s, "a", 0, 100, g), 4);
    static const uint64_t a_seqs[] = {1, 4, 6, 9};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(g->ev[i].seq, a_seqs[i]);
        assert_int_equal(g->ev[i].sv, (uint64_t) i);
        assert_string_equal(g->ev[i].subject, "a");
    }
    assert_int_equal(read_stream(s, "ab", 0, 100, g), 2);
    assert_int_equal(g->ev[0].seq, 2);
    assert_int_equal(g->ev[1].seq, 7);
    assert_int_equal(read_stream(s, "a.b", 0, 100, g), 1);
    assert_int_equal(read_stream(s, "a b", 0, 100, g), 1);
    assert_int_equal(read_stream(s, "b", 0, 100, g), 1);
    assert_int_equal(g->ev[0].seq, 5);

    /* from and limit. */
    assert_int_equal(read_stream(s, "a", 1, 2, g), 2);
    assert_int_equal(g->ev[0].sv, 1);
    assert_int_equal(g->ev[1].sv, 2);
    assert_int_equal(read_stream(s, "a", 3, 100, g), 1);
    assert_int_equal(g->ev[0].seq, 9);
    assert_int_equal(read_stream(s, "a", 4, 100, g), 0);
    assert_int_equal(read_stream(s, "a", UINT64_MAX, 100, g), 0);
    assert_int_equal(read_stream(s, "a", 0, 0, g), 0);

    /* Streams that do not exist, including prefixes and extensions of real ones. */
    assert_int_equal(read_stream(s, "c", 0, 100, g), 0);
    assert_int_equal(read_stream(s, "abc", 0, 100, g), 0);
    assert_int_equal(read_stream(s, "a.", 0, 100, g), 0);
    char *longest = malloc(MT_EVENT_MAX_SUBJECT + 2);
    assert_non_null(longest);
    memset(longest, 'a', MT_EVENT_MAX_SUBJECT + 1);
    longest[MT_EVENT_MAX_SUBJECT + 1] = '\0';
    assert_int_equal(read_stream(s, longest, 0, 100, g), 0);
    free(longest);
    free(g);
}

static mt_err run_forget_indexed(mt_txn *t, void *arg)
{
    (void) arg;
    return mt_store_del(t, MT_DB_META, MT_LOG_INDEXED_KEY, strlen(MT_LOG_INDEXED_KEY));
}

/*
 * Appends the first four stream_subjects and indexes them (then, with
 * 'forget_mark', makes the store one of before, without the mark), appends
 * the rest, which stay out of the index, and reads; then indexes all and
 * reads again.
 */
static void index_half_then_all(mt_store *s, bool forget_mark)
{
    size_t n = sizeof stream_subjects / sizeof stream_subjects[0];
    append_stream_subjects(s, 0, 4);
    assert_int_equal(stream_index_entries(s), 0);
    index_streams(s);
    assert_int_equal(stream_index_entries(s), 4);
    if (forget_mark) {
        assert_int_equal(mt_store_write(s, run_forget_indexed, NULL), MT_OK);
    }
    append_stream_subjects(s, 4, n);
    assert_int_equal(stream_index_entries(s), 4);
    check_stream_reads(s);
    index_streams(s);
    assert_int_equal(stream_index_entries(s), (int) n);
    check_stream_reads(s);
}

static void test_log_read_stream_stays_in_its_subject(void **state)
{
    mt_store *s = open_store(state);
    /* Nothing indexed, then four events indexed and five after them only in the log. */
    index_half_then_all(s, false);
    /* Indexing again finds nothing new; a reopened store reads the same. */
    index_streams(s);
    assert_int_equal(stream_index_entries(s), (int) (sizeof stream_subjects / sizeof stream_subjects[0]));
    mt_store_close(s);
    s = open_store(state);
    check_stream_reads(s);
    mt_store_close(s);
}

static void test_log_read_stream_reads_the_unindexed_tail_alone(void **state)
{
    mt_store *s = open_store(state);
    append_stream_subjects(s, 0, sizeof stream_subjects / sizeof stream_subjects[0]);
    assert_int_equal(stream_index_entries(s), 0);
    check_stream_reads(s);
    mt_store_close(s);
}

static void test_log_stream_index_of_a_store_without_the_mark(void **state)
{
    /*
     * Stores of before indexed every event as it was appended and have no
     * mark: all they hold is indexed. The first append sets the mark there.
     */
    mt_store *s = open_store(state);
    index_half_then_all(s, true);
    mt_store_close(s);
}

/* Appends events n0 .. n(to-1) on subjects s(i % 7), in batches; the event i = to - 1 may go alone. */
static void append_numbered(mt_store *s, int from, int to, bool last_alone)
{
    mt_event_batch b;
    mt_event_batch_init(&b);
    append_job j;
    for (int i = from; i < to; i++) {
        char id[32], subject[16];
        snprintf(id, sizeof id, "n%d", i);
        snprintf(subject, sizeof subject, "s%d", i % 7);
        add_event(&b, "/src", id, subject);
        if (b.count == MAX_BATCH || i == to - 1 || (last_alone && i == to - 2)) {
            assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
            mt_event_batch_free(&b);
            mt_event_batch_init(&b);
        }
    }
    mt_event_batch_free(&b);
}

/* The u64 value of a meta key; 0 if absent. */
static uint64_t meta_u64(mt_store *s, const char *key)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    const void *v;
    size_t vl;
    uint64_t x = 0;
    if (mt_store_get(t, MT_DB_META, key, strlen(key), &v, &vl) == MT_OK) {
        assert_true(vl >= 8);
        x = mt_get_be64(v);
    }
    mt_store_read_end(t);
    return x;
}

/*
 * Every stream of append_numbered's events 0 .. n-1 reads whole and in
 * order (up to MAX_GOT events each), whatever part of it is indexed.
 */
static void check_numbered_streams(mt_store *s, int n)
{
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    for (int k = 0; k < 7; k++) {
        char subject[16];
        snprintf(subject, sizeof subject, "s%d", k);
        int want = n / 7 + (k < n % 7);
        /* From the front, and from a version near the end (past what a slice may hold). */
        uint64_t froms[] = {0, want > 5 ? (uint64_t) want - 5 : 0};
        for (int f = 0; f < 2; f++) {
            int got_n = read_stream(s, subject, froms[f], MAX_GOT - 1, g);
            int expect = want - (int) froms[f];
            assert_int_equal(got_n, expect < MAX_GOT - 1 ? expect : MAX_GOT - 1);
            for (int i = 0; i < g->n; i++) {
                uint64_t sv = froms[f] + (uint64_t) i;
                assert_int_equal(g->ev[i].sv, sv);
                assert_int_equal(g->ev[i].seq, (uint64_t) (k + 7 * (int) sv + 1));
            }
        }
    }
    free(g);
}

/* An append of more events than an append_job holds results for. */
typedef struct big_append {
    mt_event_batch *b;
    mt_log_result *results;
} big_append;

static mt_err run_big_append(mt_txn *t, void *arg)
{
    big_append *j = arg;
    int64_t current;
    return mt_log_append(t, j->b, NULL, j->results, &current);
}

static mt_err run_append_then_fail(mt_txn *t, void *arg)
{
    append_job *j = arg;
    j->log_rc = mt_log_append(t, j->b, NULL, j->results, &j->current);
    return j->log_rc ? j->log_rc : MT_EINVAL;
}

/*
 * Once MT_LOG_INDEX_EVERY events lie beyond the stream index, an append
 * opens a window on them and the appends after it index them a slice
 * (MT_LOG_INDEX_SLICE entries) each, in key order; the mark moves when the
 * last slice is in, and streams read whole at every step.
 * A window whose start is undone starts again from what the log then
 * holds; one left open by a restart goes on; and one that falls twice
 * MT_LOG_INDEX_EVERY behind is finished at once.
 */
static void test_log_stream_index_is_built_a_slice_per_append(void **state)
{
    enum { EVERY = MT_LOG_INDEX_EVERY, SLICE = MT_LOG_INDEX_SLICE };
    mt_store *s = open_store(state);
    append_numbered(s, 0, EVERY - 1, false);
    assert_int_equal(stream_index_entries(s), 0); /* one short of the threshold */

    /* The append that reaches it opens a window and is undone: nothing of it stays. */
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "ghost", "ghost");
    append_job j = {.b = &b};
    assert_int_equal(mt_store_write(s, run_append_then_fail, &j), MT_EINVAL);
    assert_int_equal(j.log_rc, MT_OK);
    mt_event_batch_free(&b);
    assert_int_equal(stream_index_entries(s), 0);
    assert_int_equal(meta_u64(s, "log.streams.window"), 0);

    /* Another event in its place: the window opens on what the log holds now. */
    int n = EVERY;
    append_numbered(s, EVERY - 1, n, false);
    assert_int_equal(stream_index_entries(s), 0);
    assert_int_equal(meta_u64(s, MT_LOG_INDEXED_KEY), 0);
    assert_int_equal(meta_u64(s, "log.streams.window"), EVERY);
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    assert_int_equal(read_stream(s, "ghost", 0, 10, g), 0);
    free(g);
    check_numbered_streams(s, n);

    /* A restart leaves the window open; the next appends take a slice each. */
    mt_store_close(s);
    s = open_store(state);
    for (int k = 1; k <= EVERY / SLICE; k++) {
        append_numbered(s, n, n + 1, false);
        n++;
        assert_int_equal(stream_index_entries(s), k * SLICE);
        check_numbered_streams(s, n);
    }
    /* The last slice moved the mark to the window's end and closed it. */
    assert_int_equal(meta_u64(s, MT_LOG_INDEXED_KEY), EVERY);
    assert_int_equal(meta_u64(s, "log.streams.window"), 0);

    /* The next window opens; one append then takes the log twice EVERY past the mark. */
    append_numbered(s, n, 2 * EVERY, false);
    n = 2 * EVERY;
    assert_int_equal(meta_u64(s, "log.streams.window"), (uint64_t) n);
    assert_int_equal(stream_index_entries(s), EVERY);
    big_append j2 = {.b = &b};
    mt_event_batch_init(&b);
    for (int i = n; i < 3 * EVERY; i++) {
        char id[32], subject[16];
        snprintf(id, sizeof id, "n%d", i);
        snprintf(subject, sizeof subject, "s%d", i % 7);
        add_event(&b, "/src", id, subject);
    }
    j2.results = calloc((size_t) b.count, sizeof *j2.results);
    assert_non_null(j2.results);
    assert_int_equal(mt_store_write(s, run_big_append, &j2), MT_OK);
    free(j2.results);
    mt_event_batch_free(&b);
    n = 3 * EVERY;
    /* That append finished the open window at once, and opened none. */
    assert_int_equal(meta_u64(s, MT_LOG_INDEXED_KEY), 2 * EVERY);
    assert_int_equal(meta_u64(s, "log.streams.window"), 0);
    assert_int_equal(stream_index_entries(s), 2 * EVERY);
    check_numbered_streams(s, n);
    /* The next append opens a window on everything past the mark. */
    append_numbered(s, n, n + 1, false);
    n++;
    assert_int_equal(meta_u64(s, "log.streams.window"), (uint64_t) n);
    assert_int_equal(stream_index_entries(s), 2 * EVERY);
    append_numbered(s, n, n + 1, false);
    n++;
    assert_int_equal(stream_index_entries(s), 2 * EVERY + SLICE);
    check_numbered_streams(s, n);

    /* A window of events without a subject has no entries: it opens and closes all the same. */
    append_numbered(s, n, n + SLICE, false);
    n += SLICE;
    index_streams(s);
    int indexed = n;
    for (int i = 0; i < EVERY; i += MAX_BATCH) {
        mt_event_batch_init(&b);
        for (int k = 0; k < MAX_BATCH; k++) {
            char id[32];
            snprintf(id, sizeof id, "x%d", i + k);
            add_event(&b, "/src", id, NULL);
        }
        append_job jx;
        assert_int_equal(append_batch(s, &b, NULL, &jx), MT_OK);
        mt_event_batch_free(&b);
    }
    assert_int_equal(meta_u64(s, "log.streams.window"), (uint64_t) (indexed + EVERY));
    append_one(s, "/src", "after-x", NULL);
    assert_int_equal(meta_u64(s, "log.streams.window"), 0);
    assert_int_equal(meta_u64(s, MT_LOG_INDEXED_KEY), (uint64_t) (indexed + EVERY));
    assert_int_equal(stream_index_entries(s), indexed);
    check_numbered_streams(s, n);

    /* mt_log_index_streams brings all of it in. */
    index_streams(s);
    assert_int_equal(stream_index_entries(s), n);
    assert_int_equal(meta_u64(s, MT_LOG_INDEXED_KEY), (uint64_t) n + EVERY + 1);
    assert_int_equal(meta_u64(s, "log.streams.window"), 0);
    check_numbered_streams(s, n);
    mt_store_close(s);
}

static void test_log_get_reads_one_event(void **state)
{
    mt_store *s = open_store(state);
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event_data(&b, "/src", "e1", "s", "{\"big\": 9223372036854775807}");
    add_event(&b, "/src", "e2", NULL);
    append_job j;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    mt_event_batch_free(&b);

    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    mt_event ev;
    assert_int_equal(mt_log_get(t, 1, &ev), MT_OK);
    assert_int_equal(ev.sequence, 1);
    assert_string_equal(ev.attr[MT_ATTR_ID], "e1");
    assert_string_equal(ev.attr[MT_ATTR_SOURCE], "/src");
    assert_string_equal(ev.attr[MT_ATTR_TYPE], "t.e");
    assert_string_equal(ev.attr[MT_ATTR_SUBJECT], "s");
    assert_int_equal(ev.data_kind, MT_DATA_JSON);
    assert_int_equal(ev.data_len, strlen("{\"big\": 9223372036854775807}"));
    assert_memory_equal(ev.data, "{\"big\": 9223372036854775807}", ev.data_len);
    assert_true(ev.recordedtime_us > 0);
    assert_int_equal(mt_log_get(t, 2, &ev), MT_OK);
    assert_string_equal(ev.attr[MT_ATTR_ID], "e2");
    assert_null(ev.attr[MT_ATTR_SUBJECT]);

    static const uint64_t missing[] = {0, 3, 1000, UINT64_MAX};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        assert_int_equal(mt_log_get(t, missing[i], &ev), MT_ENOTFOUND);
        assert_null(ev.attr[MT_ATTR_ID]);
    }
    mt_store_read_end(t);
    mt_store_close(s);
}

/* ---- durability ---- */

static void test_log_survives_close_and_reopen(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "e1", "s");
    append_one(s, "/src", "e2", "s");
    append_one(s, "/src", "e3", NULL);
    mt_store_close(s);

    s = open_store(state);
    static const char *const ids[] = {"e1", "e2", "e3"};
    expect_log_ids(s, ids, 3);
    assert_int_equal(stream_head(s, "s"), 1);
    /* Positions, stream versions and the dedupe index carry on. */
    mt_log_result r = append_one(s, "/src", "e4", "s");
    assert_int_equal(r.sequence, 4);
    assert_int_equal(r.streamversion, 2);
    r = append_one(s, "/src", "e1", "s");
    assert_true(r.duplicate);
    assert_int_equal(r.sequence, 1);
    mt_store_close(s);

    /* With nosync durability too (no write-ahead file). */
    char *dir = malloc(strlen(*state) + 16);
    assert_non_null(dir);
    sprintf(dir, "%s/nosync", (char *) *state);
    mt_store_opts o = {.dir = dir, .map_size = 16 * MIB, .wal_size = MIB, .nosync = true};
    assert_int_equal(mt_store_open(&o, &s), MT_OK);
    append_one(s, "/src", "n1", "s");
    mt_store_close(s);
    assert_int_equal(mt_store_open(&o, &s), MT_OK);
    static const char *const nids[] = {"n1"};
    expect_log_ids(s, nids, 1);
    mt_store_close(s);
    char *wal = malloc(strlen(dir) + 8);
    assert_non_null(wal);
    sprintf(wal, "%s/wal", dir);
    assert_int_not_equal(access(wal, F_OK), 0);
    free(wal);
    free(dir);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    assert_non_null(in);
    FILE *out = fopen(to, "wb");
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        assert_int_equal(fwrite(buf, 1, n, out), n);
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* DIR/NAME (caller frees). */
static char *in_dir(void **state, const char *name)
{
    char *p = malloc(strlen(*state) + strlen(name) + 2);
    assert_non_null(p);
    sprintf(p, "%s/%s", (char *) *state, name);
    return p;
}

/*
 * A power cut, simulated: the write-ahead file as it was while the store
 * ran (groups since the last checkpoint, and that checkpoint's LMDB meta
 * pages) replaces the one a clean close leaves. At open the store puts the
 * checkpoint's meta pages back, so LMDB forgets every later commit, and must
 * rebuild them from the write-ahead records alone.
 */
static void save_wal(void **state)
{
    char *wal = in_dir(state, "wal");
    char *saved = in_dir(state, "wal.at-crash");
    copy_file(wal, saved);
    free(wal);
    free(saved);
}

static void restore_wal(void **state)
{
    char *wal = in_dir(state, "wal");
    char *saved = in_dir(state, "wal.at-crash");
    assert_int_equal(rename(saved, wal), 0);
    free(wal);
    free(saved);
}

static void test_log_replays_the_write_ahead_file_after_lmdb_lost_its_commits(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "e1", "s");
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "e2", "s");
    add_event(&b, "/src", "e3", "t");
    add_event_data(&b, "/src", "e4", NULL, "[1, 2.50, 9223372036854775807]");
    append_job j;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    mt_event_batch_free(&b);
    /* A failed job's writes are not in the write-ahead file either. */
    mt_event_batch_init(&b);
    add_event(&b, "/src", "undone", "s");
    memset(&j, 0, sizeof j);
    j.b = &b;
    j.fail_after = MT_ECONFLICT;
    assert_int_equal(mt_store_write(s, run_append, &j), MT_ECONFLICT);
    mt_event_batch_free(&b);
    append_one(s, "/src", "e5", "s");
    save_wal(state);
    mt_store_close(s);
    restore_wal(state);

    s = open_store(state);
    static const char *const ids[] = {"e1", "e2", "e3", "e4", "e5"};
    expect_log_ids(s, ids, 5);
    assert_int_equal(stream_head(s, "s"), 2);
    assert_int_equal(stream_head(s, "t"), 0);
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    assert_int_equal(read_stream(s, "s", 0, 10, g), 3);
    assert_int_equal(g->ev[2].seq, 5);
    assert_int_equal(read_log(s, 3, 1, g), 1);
    assert_int_equal(g->ev[0].data_len, strlen("[1, 2.50, 9223372036854775807]"));
    free(g);
    assert_true(append_one(s, "/src", "e3", NULL).duplicate);
    assert_false(append_one(s, "/src", "undone", NULL).duplicate);
    mt_store_close(s);

    /* Opening again replays nothing twice. */
    s = open_store(state);
    static const char *const ids2[] = {"e1", "e2", "e3", "e4", "e5", "undone"};
    expect_log_ids(s, ids2, 6);
    mt_store_close(s);
}

/* put_new and cursor puts: what they write is read back, and redone after LMDB lost it. */
typedef struct once_job {
    mt_err first, again, find_b, find_a, put_b, put_a;
    char old[8];
    bool old_ok;
} once_job;

static mt_err run_once(mt_txn *t, void *arg)
{
    once_job *j = arg; /* on the writer thread: no cmocka assertions here */
    const void *v;
    size_t vl;
    j->first = mt_store_put_new(t, MT_DB_KV, "a", 1, "1", 1, &v, &vl);
    j->again = mt_store_put_new(t, MT_DB_KV, "a", 1, "2", 1, &v, &vl);
    j->old_ok = vl == 1 && memcmp(v, "1", 1) == 0;
    mt_cursor *c;
    mt_err rc = mt_store_cursor_open(t, MT_DB_KV, &c);
    if (rc) {
        return rc;
    }
    j->find_b = mt_store_cursor_find(c, "b", 1, &v, &vl);
    j->put_b = mt_store_cursor_put(c, "b", 1, "x", 1, 0);
    j->find_a = mt_store_cursor_find(c, "a", 1, &v, &vl);
    j->put_a = mt_store_cursor_put(c, "a", 1, "3", 1, MT_STORE_CURRENT);
    mt_store_cursor_close(c);
    return MT_OK;
}


static bool kv_has(mt_store *s, const char *key, const char *want)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_KV, key, strlen(key), &v, &vl);
    bool found = rc == MT_OK;
    if (found) {
        assert_int_equal(vl, strlen(want));
        assert_memory_equal(v, want, vl);
    } else {
        assert_int_equal(rc, MT_ENOTFOUND);
        assert_null(v);
    }
    mt_store_read_end(t);
    return found;
}

static void test_store_put_new_and_cursor_puts(void **state)
{
    mt_store *s = open_store(state);
    once_job j;
    memset(&j, 0, sizeof j);
    assert_int_equal(mt_store_write(s, run_once, &j), MT_OK);
    assert_int_equal(j.first, MT_OK);
    assert_int_equal(j.again, MT_EEXISTS);
    assert_true(j.old_ok);
    assert_int_equal(j.find_b, MT_ENOTFOUND);
    assert_int_equal(j.put_b, MT_OK);
    assert_int_equal(j.find_a, MT_OK);
    assert_int_equal(j.put_a, MT_OK);
    assert_true(kv_has(s, "a", "3"));
    assert_true(kv_has(s, "b", "x"));
    save_wal(state);
    mt_store_close(s);
    restore_wal(state);
    s = open_store(state);
    assert_true(kv_has(s, "a", "3"));
    assert_true(kv_has(s, "b", "x"));
    mt_store_close(s);
}

/* A caller that goes on after a conflict: the refused event left no trace, its id is free. */
typedef struct conflict_job {
    mt_event_batch *b;
    mt_log_result r1[1], r2[1];
    mt_err rc1, rc2;
    int64_t current;
} conflict_job;

static mt_err run_conflict_then_any(mt_txn *t, void *arg)
{
    conflict_job *j = arg;
    mt_expect none = {MT_EXPECT_NO_STREAM, 0};
    j->rc1 = mt_log_append(t, j->b, &none, j->r1, &j->current);
    j->rc2 = mt_log_append(t, j->b, NULL, j->r2, &j->current);
    return j->rc2;
}

static void test_log_append_after_a_conflict_in_one_transaction(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "e1", "s");
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/src", "e2", "s");
    conflict_job j = {.b = &b};
    assert_int_equal(mt_store_write(s, run_conflict_then_any, &j), MT_OK);
    assert_int_equal(j.rc1, MT_ECONFLICT);
    assert_false(j.r2[0].duplicate);
    assert_int_equal(j.r2[0].sequence, 2);
    assert_int_equal(j.r2[0].streamversion, 1);
    mt_event_batch_free(&b);
    static const char *const ids[] = {"e1", "e2"};
    expect_log_ids(s, ids, 2);
    mt_store_close(s);
}

/* ---- a full map ---- */

/* An event whose data is a JSON string of 'n' bytes of 'c'. */
static void add_big_event(mt_event_batch *b, const char *id, size_t n, char c)
{
    char *data = malloc(n + 3);
    assert_non_null(data);
    data[0] = '"';
    memset(data + 1, c, n);
    data[n + 1] = '"';
    data[n + 2] = '\0';
    add_event_data(b, "/big", id, "big", data);
    free(data);
}

static int check_big_events(mt_store *s, int n, size_t size)
{
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    int count = read_log(s, 0, UINT64_MAX, g);
    assert_true(count >= n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(g->ev[i].seq, (uint64_t) i + 1);
        assert_int_equal(g->ev[i].sv, (uint64_t) i);
        assert_int_equal(g->ev[i].data_len, size + 2);
        assert_int_equal(g->ev[i].data_head[1], 'a' + i % 26);
    }
    free(g);
    /* Every byte of every event, through mt_log_get. */
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    for (int i = 0; i < n; i++) {
        mt_event ev;
        assert_int_equal(mt_log_get(t, (uint64_t) i + 1, &ev), MT_OK);
        for (size_t k = 1; k <= size; k++) {
            if (ev.data[k] != 'a' + i % 26) {
                fail_msg("event %d byte %zu is corrupt", i + 1, k);
            }
        }
    }
    mt_store_read_end(t);
    return count;
}

static void test_log_full_map_fails_the_job_and_keeps_the_store_intact(void **state)
{
    const size_t size = 60000;
    mt_store *s = open_store_sized(*state, MIB);
    int n = 0;
    mt_err rc = MT_OK;
    while (n < 100) {
        mt_event_batch b;
        mt_event_batch_init(&b);
        char id[16];
        snprintf(id, sizeof id, "big%d", n);
        add_big_event(&b, id, size, (char) ('a' + n % 26));
        append_job j;
        rc = append_batch(s, &b, NULL, &j);
        mt_event_batch_free(&b);
        if (rc) {
            break;
        }
        n++;
    }
    assert_int_equal(rc, MT_EFULL);
    assert_true(n > 0);
    check_big_events(s, n, size);

    /* A small event in a new job either fits or fails cleanly. */
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_event(&b, "/small", "s1", NULL);
    append_job j;
    rc = append_batch(s, &b, NULL, &j);
    mt_event_batch_free(&b);
    assert_true(rc == MT_OK || rc == MT_EFULL);
    int total = n + (rc == MT_OK);
    assert_int_equal(log_head(s), (uint64_t) total);
    assert_int_equal(check_big_events(s, n, size), total);
    mt_store_close(s);

    /* It opens again, with everything. */
    s = open_store_sized(*state, MIB);
    assert_int_equal(log_head(s), (uint64_t) total);
    assert_int_equal(check_big_events(s, n, size), total);
    assert_int_equal(stream_head(s, "big"), n - 1);
    mt_store_close(s);

    /* With a larger map the log grows on where it stopped. */
    s = open_store_sized(*state, 4 * MIB);
    mt_event_batch_init(&b);
    add_big_event(&b, "more", size, (char) ('a' + n % 26));
    rc = append_batch(s, &b, NULL, &j);
    mt_event_batch_free(&b);
    assert_int_equal(rc, MT_OK);
    assert_int_equal(j.results[0].sequence, (uint64_t) total + 1);
    assert_int_equal(j.results[0].streamversion, (uint64_t) n);
    mt_store_close(s);
}

/* ---- the store ---- */

static void test_store_second_open_of_a_directory_is_eunavail(void **state)
{
    mt_store *s = open_store(state);
    mt_store_opts o = {.dir = *state, .map_size = 64 * MIB, .wal_size = MIB};
    mt_store *other = (mt_store *) &other;
    assert_int_equal(mt_store_open(&o, &other), MT_EUNAVAIL);
    assert_null(other);
    o.nosync = true;
    other = (mt_store *) &other;
    assert_int_equal(mt_store_open(&o, &other), MT_EUNAVAIL);
    assert_null(other);
    /* The first store is unharmed, and the lock goes with it. */
    append_one(s, "/src", "e1", NULL);
    mt_store_close(s);
    s = open_store(state);
    assert_int_equal(log_head(s), 1);
    mt_store_close(s);
}

static void test_store_open_refuses_bad_options(void **state)
{
    mt_store_opts o = {.dir = *state, .map_size = MIB - 1, .wal_size = MIB};
    mt_store *s = (mt_store *) &s;
    assert_int_equal(mt_store_open(&o, &s), MT_EINVAL);
    assert_null(s);
    o.map_size = 64 * MIB;
    o.dir = "";
    s = (mt_store *) &s;
    assert_int_equal(mt_store_open(&o, &s), MT_EINVAL);
    assert_null(s);
    o.dir = NULL;
    s = (mt_store *) &s;
    assert_int_equal(mt_store_open(&o, &s), MT_EINVAL);
    assert_null(s);
    /* A write-ahead file below 1 MiB. */
    o.dir = *state;
    o.wal_size = MIB / 2;
    s = (mt_store *) &s;
    assert_int_equal(mt_store_open(&o, &s), MT_EINVAL);
    assert_null(s);
    mt_store_close(NULL);
}

static void test_store_creates_missing_data_directories(void **state)
{
    char *dir = in_dir(state, "a/b/c");
    mt_store *s = open_store_sized(dir, 16 * MIB);
    append_one(s, "/src", "e1", NULL);
    mt_store_close(s);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    free(dir);
}

typedef struct async_job {
    mt_event_batch b;
    append_job aj;
    int index;
    atomic_int *done_order;   /* shared counter: position of each done call */
    int order;                /* set by done */
    mt_err rc;                /* set by done */
    pthread_t done_thread;
    bool done_called;
} async_job;

static mt_err async_run(mt_txn *t, void *arg)
{
    async_job *a = arg;
    return run_append(t, &a->aj);
}

static void async_done(mt_err rc, void *arg)
{
    async_job *a = arg;
    assert_false(a->done_called);
    a->done_called = true;
    a->rc = rc;
    a->order = atomic_fetch_add(a->done_order, 1);
    a->done_thread = pthread_self();
}

/*
 * How the group tests submit their appends: one nested transaction each
 * (mt_store_submit), or sharing one while they succeed
 * (mt_store_submit_repeatable, as the HTTP API does). Each group test runs
 * both ways; the outcomes must not differ.
 */
static bool submit_repeatable;

static void submit_async(mt_store *s, async_job *a)
{
    mt_err rc = submit_repeatable ? mt_store_submit_repeatable(s, async_run, async_done, a)
                                  : mt_store_submit(s, async_run, async_done, a);
    assert_int_equal(rc, MT_OK);
}

static atomic_int notified;
static atomic_bool notify_arg_wrong;

/* Runs on the writer thread: counts, and notes a wrong argument for the test to check. */
static void count_notify(void *arg)
{
    if (arg != &notified) {
        atomic_store(&notify_arg_wrong, true);
    }
    atomic_fetch_add(&notified, 1);
}

/* Calls mt_store_complete until 'n' done callbacks have run (or 10 s pass). */
static void complete_until(mt_store *s, atomic_int *done_count, int n)
{
    int64_t deadline = mt_mono_us() + 10 * 1000000LL;
    while (atomic_load(done_count) < n) {
        assert_true(mt_mono_us() < deadline);
        mt_store_complete(s);
        usleep(1000);
    }
}

static void test_store_done_callbacks_run_in_order_on_the_completing_thread(void **state)
{
    mt_store *s = open_store(state);
    atomic_store(&notified, 0);
    mt_store_set_notify(s, count_notify, &notified);
    enum { N = 20 };
    async_job *jobs = calloc(N, sizeof *jobs);
    assert_non_null(jobs);
    atomic_int done_order = 0;
    for (int i = 0; i < N; i++) {
        mt_event_batch_init(&jobs[i].b);
        char id[16];
        snprintf(id, sizeof id, "a%d", i);
        add_event(&jobs[i].b, "/src", id, "s");
        jobs[i].aj.b = &jobs[i].b;
        jobs[i].index = i;
        jobs[i].done_order = &done_order;
        if (i == 7) {
            jobs[i].aj.fail_after = MT_ETIMEOUT; /* a job's own error reaches its callback */
        }
        assert_int_equal(mt_store_submit(s, async_run, async_done, &jobs[i]), MT_OK);
    }
    /* Nothing is answered before mt_store_complete, however long we wait. */
    int64_t deadline = mt_mono_us() + 10 * 1000000LL;
    while (atomic_load(&notified) == 0) {
        assert_true(mt_mono_us() < deadline);
        usleep(1000);
    }
    assert_int_equal(atomic_load(&done_order), 0);

    complete_until(s, &done_order, N);
    assert_true(atomic_load(&notified) >= 1);
    assert_false(atomic_load(&notify_arg_wrong));
    for (int i = 0; i < N; i++) {
        assert_true(jobs[i].done_called);
        assert_int_equal(jobs[i].order, i);
        assert_true(pthread_equal(jobs[i].done_thread, pthread_self()));
        assert_int_equal(jobs[i].rc, i == 7 ? MT_ETIMEOUT : MT_OK);
        if (i != 7) {
            assert_int_equal(jobs[i].aj.results[0].sequence, (uint64_t) (i < 7 ? i + 1 : i));
        }
        mt_event_batch_free(&jobs[i].b);
    }
    assert_int_equal(log_head(s), N - 1);
    mt_store_close(s);
    free(jobs);
}

static void test_store_close_runs_pending_done_callbacks(void **state)
{
    mt_store *s = open_store(state);
    atomic_int done_order = 0;
    async_job a;
    memset(&a, 0, sizeof a);
    mt_event_batch_init(&a.b);
    add_event(&a.b, "/src", "late", NULL);
    a.aj.b = &a.b;
    a.done_order = &done_order;
    assert_int_equal(mt_store_submit(s, async_run, async_done, &a), MT_OK);
    mt_store_close(s); /* never called mt_store_complete */
    assert_true(a.done_called);
    assert_int_equal(a.rc, MT_OK);
    mt_event_batch_free(&a.b);

    s = open_store(state);
    assert_int_equal(log_head(s), 1);
    mt_store_close(s);
}

/* A job that holds the writer until the test lets it go. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered;
    bool open;
} gate;

static mt_err gate_run(mt_txn *t, void *arg)
{
    (void) t;
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open) {
        pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return MT_OK;
}

static void gate_done(mt_err rc, void *arg)
{
    (void) rc;
    (void) arg;
}

/* Holds the writer with a gate job until 'g' is opened; returns once it is held. */
static void hold_writer(mt_store *s, gate *g)
{
    assert_int_equal(mt_store_submit(s, gate_run, gate_done, g), MT_OK);
    pthread_mutex_lock(&g->mu);
    while (!g->entered) {
        pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

static void release_writer(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void jobs_in_one_group_fail_independently(void **state)
{
    mt_store *s = open_store(state);
    append_one(s, "/src", "first", "s");
    mt_store_stats before;
    mt_store_get_stats(s, &before);

    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    assert_int_equal(mt_store_submit(s, gate_run, gate_done, &g), MT_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.entered) {
        pthread_cond_wait(&g.cv, &g.mu);
    }
    pthread_mutex_unlock(&g.mu);

    /* While the writer is held, queue five jobs: they will form one group. */
    enum { N = 5 };
    atomic_int done_order = 0;
    async_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    static const char *const ids[N] = {"ok-1", "fails", "ok-2", "ok-1", "fails"};
    for (int i = 0; i < N; i++) {
        mt_event_batch_init(&jobs[i].b);
        add_event(&jobs[i].b, "/src", ids[i], "s");
        jobs[i].aj.b = &jobs[i].b;
        jobs[i].done_order = &done_order;
    }
    jobs[1].aj.fail_after = MT_EEXISTS;
    for (int i = 0; i < N; i++) {
        submit_async(s, &jobs[i]);
    }
    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    complete_until(s, &done_order, N);

    static const mt_err want_rc[N] = {MT_OK, MT_EEXISTS, MT_OK, MT_OK, MT_OK};
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].rc, want_rc[i]);
    }
    /* The failed job's writes are gone; its neighbours' positions stay contiguous. */
    assert_int_equal(jobs[0].aj.results[0].sequence, 2);
    assert_int_equal(jobs[2].aj.results[0].sequence, 3);
    assert_int_equal(jobs[2].aj.results[0].streamversion, 2);
    /* Later jobs of the group see earlier ones' commits, not the failed job's. */
    assert_true(jobs[3].aj.results[0].duplicate);
    assert_int_equal(jobs[3].aj.results[0].sequence, 2);
    assert_false(jobs[4].aj.results[0].duplicate);
    assert_int_equal(jobs[4].aj.results[0].sequence, 4);
    static const char *const want[] = {"first", "ok-1", "ok-2", "fails"};
    expect_log_ids(s, want, 4);

    mt_store_stats after;
    mt_store_get_stats(s, &after);
    assert_int_equal(after.groups - before.groups, 2); /* the gate, then the five */
    assert_int_equal(after.jobs - before.jobs, N + 1);
    /*
     * The gate's, then one each; shared: a first try that fails at job 1,
     * jobs 0 and 1 again alone, then jobs 2 to 4 together.
     */
    assert_int_equal(after.nested - before.nested, submit_repeatable ? 1 + 1 + 2 + 1 : 1 + N);
    for (int i = 0; i < N; i++) {
        mt_event_batch_free(&jobs[i].b);
    }
    mt_store_complete(s);
    mt_store_close(s);
}

static void test_store_jobs_in_one_group_fail_independently(void **state)
{
    submit_repeatable = false;
    jobs_in_one_group_fail_independently(state);
}

static void test_store_repeatable_jobs_in_one_group_fail_independently(void **state)
{
    submit_repeatable = true;
    jobs_in_one_group_fail_independently(state);
}

/*
 * Jobs that note the order they ran in. The slow one runs past the time
 * after which a group makes way for publishes, and submits a repeatable
 * job meanwhile, so that one is waiting when it ends.
 */
typedef struct noted_job {
    mt_store *s;
    const char *name;
    char *ran;                 /* shared: names in the order run (writer thread) */
    atomic_int *done_count;
    struct noted_job *submit;  /* for the slow one: submitted while it runs */
} noted_job;

static void noted_done(mt_err rc, void *arg)
{
    noted_job *n = arg;
    assert_int_equal(rc, MT_OK);
    atomic_fetch_add(n->done_count, 1);
}

static mt_err noted_run(mt_txn *t, void *arg)
{
    (void) t;
    noted_job *n = arg;
    strcat(n->ran, n->name);
    if (n->submit) {
        assert_int_equal(mt_store_submit_repeatable(n->s, noted_run, noted_done, n->submit), MT_OK);
        usleep(15000); /* more than the 10 ms after which a group may end */
    }
    return MT_OK;
}

static void test_store_a_long_group_makes_way_for_waiting_publishes(void **state)
{
    mt_store *s = open_store(state);
    char ran[16] = "";
    atomic_int done = 0;
    noted_job r1 = {s, "R1", ran, &done, NULL};
    noted_job slow = {s, "S", ran, &done, &r1};
    noted_job o1 = {s, "O", ran, &done, NULL};
    noted_job r0 = {s, "R0", ran, &done, NULL};
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    hold_writer(s, &g);
    mt_store_stats before;
    mt_store_get_stats(s, &before);
    assert_int_equal(mt_store_submit(s, noted_run, noted_done, &slow), MT_OK);
    assert_int_equal(mt_store_submit(s, noted_run, noted_done, &o1), MT_OK);
    assert_int_equal(mt_store_submit_repeatable(s, noted_run, noted_done, &r0), MT_OK);
    release_writer(&g);
    complete_until(s, &done, 4);
    /*
     * The group [S, O, R0] ends after S, since R1 waits: the publishes R0
     * and R1 (in their order) go before O in the next group.
     */
    assert_string_equal(ran, "SR0R1O");
    mt_store_stats after;
    mt_store_get_stats(s, &after);
    assert_int_equal(after.groups - before.groups, 3); /* the gate's, [S], [R0 R1 O] */
    mt_store_close(s);
}

/* Repeatable jobs that all succeed share one nested transaction, in order. */
static void test_store_repeatable_jobs_share_one_nested_transaction(void **state)
{
    submit_repeatable = true;
    mt_store *s = open_store(state);
    append_one(s, "/src", "first", "s");
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    hold_writer(s, &g);
    mt_store_stats before;
    mt_store_get_stats(s, &before);
    enum { N = 6 };
    atomic_int done_order = 0;
    async_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    static const char *const ids[N] = {"a", "b", "a", "c", "d", "e"};
    for (int i = 0; i < N; i++) {
        mt_event_batch_init(&jobs[i].b);
        add_event(&jobs[i].b, "/src", ids[i], i % 2 ? "s" : "t");
        jobs[i].aj.b = &jobs[i].b;
        jobs[i].done_order = &done_order;
        jobs[i].index = i;
        submit_async(s, &jobs[i]);
    }
    release_writer(&g);
    complete_until(s, &done_order, N);
    mt_store_stats after;
    mt_store_get_stats(s, &after);
    /* The gate's group is counted when it ends: it, then the six in one. */
    assert_int_equal(after.groups - before.groups, 2);
    assert_int_equal(after.nested - before.nested, 2);
    static const uint64_t want_seq[N] = {2, 3, 2, 4, 5, 6};
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].rc, MT_OK);
        assert_int_equal(jobs[i].order, i);
        assert_int_equal(jobs[i].aj.results[0].sequence, want_seq[i]);
        assert_int_equal(jobs[i].aj.results[0].duplicate, i == 2);
        mt_event_batch_free(&jobs[i].b);
    }
    /* Stream versions count on across the shared jobs: s is first, b, c, e; t is a, d. */
    assert_int_equal(jobs[1].aj.results[0].streamversion, 1); /* "first" was s's version 0 */
    assert_int_equal(jobs[3].aj.results[0].streamversion, 2);
    assert_int_equal(jobs[5].aj.results[0].streamversion, 3);
    assert_int_equal(jobs[4].aj.results[0].streamversion, 1); /* t: a is 0, d is 1 */
    static const char *const want[] = {"first", "a", "b", "c", "d", "e"};
    expect_log_ids(s, want, N);
    mt_store_close(s);
    s = open_store(state); /* and they are durable as one group */
    expect_log_ids(s, want, N);
    mt_store_close(s);
}

/* Queues one job per size, each one event (ids PREFIX0, PREFIX1...) of that many data bytes. */
static async_job *submit_group_of_big_events(mt_store *s, const char *prefix,
                                             const size_t *sizes, int n, atomic_int *done_order)
{
    async_job *jobs = calloc((size_t) n, sizeof *jobs);
    assert_non_null(jobs);
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "%s%d", prefix, i);
        mt_event_batch_init(&jobs[i].b);
        add_big_event(&jobs[i].b, id, sizes[i], (char) ('a' + i % 26));
        jobs[i].aj.b = &jobs[i].b;
        jobs[i].done_order = done_order;
        submit_async(s, &jobs[i]);
    }
    return jobs;
}

static void free_jobs(async_job *jobs, int n)
{
    for (int i = 0; i < n; i++) {
        mt_event_batch_free(&jobs[i].b);
    }
    free(jobs);
}

static void job_too_big_for_the_write_ahead_file_fails_alone(void **state)
{
    /* The write-ahead file holds 1 MiB; one job's event alone is larger. */
    mt_store *s = open_store(state);
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    hold_writer(s, &g);
    atomic_int done_order = 0;
    static const size_t sizes[] = {100, 2 * MIB, 100};
    async_job *jobs = submit_group_of_big_events(s, "g", sizes, 3, &done_order);
    release_writer(&g);
    complete_until(s, &done_order, 3);
    mt_err rc[3] = {jobs[0].rc, jobs[1].rc, jobs[2].rc};
    free_jobs(jobs, 3);
    uint64_t head = log_head(s);
    mt_store_close(s);

    assert_int_not_equal(rc[1], MT_OK);
    if (rc[0] != MT_OK || rc[2] != MT_OK || head != 2) {
        fail_msg("the small jobs of the group failed with it: %s, %s (log head %llu)",
                 mt_err_str(rc[0]), mt_err_str(rc[2]), (unsigned long long) head);
    }
}

static void group_larger_than_the_write_ahead_file_commits_every_job(void **state)
{
    /* 40 jobs of 40 KB: each fits the 1 MiB write-ahead file easily, together they do not. */
    mt_store *s = open_store(state);
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    hold_writer(s, &g);
    enum { N = 40 };
    size_t sizes[N];
    for (int i = 0; i < N; i++) {
        sizes[i] = 40000;
    }
    atomic_int done_order = 0;
    async_job *jobs = submit_group_of_big_events(s, "g", sizes, N, &done_order);
    release_writer(&g);
    complete_until(s, &done_order, N);
    int failed = 0;
    mt_err first_rc = MT_OK;
    for (int i = 0; i < N; i++) {
        if (jobs[i].rc != MT_OK) {
            first_rc = failed++ ? first_rc : jobs[i].rc;
        }
    }
    free_jobs(jobs, N);
    uint64_t head = log_head(s);
    mt_store_close(s);
    if (failed) {
        fail_msg("%d of %d jobs failed (%s); log head %llu", failed, N, mt_err_str(first_rc),
                 (unsigned long long) head);
    }
    assert_int_equal(head, N);
}

static void test_store_job_too_big_for_the_write_ahead_file_fails_alone(void **state)
{
    submit_repeatable = false;
    job_too_big_for_the_write_ahead_file_fails_alone(state);
}

static void test_store_repeatable_job_too_big_for_the_write_ahead_file_fails_alone(void **state)
{
    submit_repeatable = true;
    job_too_big_for_the_write_ahead_file_fails_alone(state);
}

static void test_store_group_larger_than_the_write_ahead_file_commits_every_job(void **state)
{
    submit_repeatable = false;
    group_larger_than_the_write_ahead_file_commits_every_job(state);
}

static void test_store_repeatable_group_larger_than_the_write_ahead_file_commits_every_job(
    void **state)
{
    submit_repeatable = true;
    group_larger_than_the_write_ahead_file_commits_every_job(state);
}

static void test_log_group_that_needs_a_checkpoint_to_fit_commits(void **state)
{
    submit_repeatable = false;
    /*
     * The first group leaves the 1 MiB write-ahead file under a quarter
     * full, so no checkpoint starts. Then three jobs of 300 KB are queued
     * together: the first two make a group (a group stops past half the
     * file), the third does not fit in what is left, so the writer waits for
     * a checkpoint and writes it behind. Everything survives, also a crash
     * right after.
     */
    mt_store *s = open_store(state);
    mt_store_stats st0;
    mt_store_get_stats(s, &st0);
    mt_event_batch b;
    mt_event_batch_init(&b);
    add_big_event(&b, "g0", 200000, 'a');
    append_job j;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    mt_event_batch_free(&b);
    mt_store_stats st1;
    mt_store_get_stats(s, &st1);
    assert_int_equal(st1.checkpoints, st0.checkpoints);

    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    hold_writer(s, &g);
    atomic_int done_order = 0;
    static const size_t sizes[] = {300000, 300000, 300000};
    async_job *jobs = submit_group_of_big_events(s, "h", sizes, 3, &done_order);
    release_writer(&g);
    complete_until(s, &done_order, 3);
    mt_err rc[3] = {jobs[0].rc, jobs[1].rc, jobs[2].rc};
    free_jobs(jobs, 3);
    assert_int_equal(rc[0], MT_OK);
    assert_int_equal(rc[1], MT_OK);
    assert_int_equal(rc[2], MT_OK);
    mt_store_stats st2;
    mt_store_get_stats(s, &st2);
    assert_true(st2.checkpoints >= st1.checkpoints + 1);
    save_wal(state);
    mt_store_close(s);
    restore_wal(state);

    s = open_store(state);
    static const char *const ids[] = {"g0", "h0", "h1", "h2"};
    expect_log_ids(s, ids, 4);
    got *gl = malloc(sizeof *gl);
    assert_non_null(gl);
    assert_int_equal(read_log(s, 0, 10, gl), 4);
    assert_int_equal(gl->ev[0].data_len, 200002);
    for (int i = 1; i < 4; i++) {
        assert_int_equal(gl->ev[i].data_len, 300002);
        assert_int_equal(gl->ev[i].data_head[1], 'a' + i - 1);
    }
    free(gl);
    mt_store_close(s);
}

static void test_log_accepts_keys_at_their_maximum_length(void **state)
{
    mt_store *s = open_store(state);
    char id[MT_EVENT_MAX_ID + 1], source[MT_EVENT_MAX_SOURCE + 1],
        subject[MT_EVENT_MAX_SUBJECT + 1];
    memset(id, 'i', MT_EVENT_MAX_ID);
    id[MT_EVENT_MAX_ID] = '\0';
    memset(source, 's', MT_EVENT_MAX_SOURCE);
    source[MT_EVENT_MAX_SOURCE] = '\0';
    memset(subject, 'j', MT_EVENT_MAX_SUBJECT);
    subject[MT_EVENT_MAX_SUBJECT] = '\0';
    mt_log_result r = append_one(s, source, id, subject);
    assert_int_equal(r.sequence, 1);
    r = append_one(s, source, "2", subject);
    assert_int_equal(r.streamversion, 1);
    assert_true(append_one(s, source, id, NULL).duplicate);
    got *g = malloc(sizeof *g);
    assert_non_null(g);
    memset(g, 0, sizeof *g);
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    assert_int_equal(mt_log_read_stream(t, subject, 0, 10, collect, g), 0);
    mt_store_read_end(t);
    assert_int_equal(g->n, 2);
    free(g);
    assert_int_equal(stream_head(s, subject), 1);
    mt_store_close(s);
}

/* ---- savepoints ---- */

static mt_err put_kv(mt_txn *t, const char *key, const char *val)
{
    return mt_store_put(t, MT_DB_KV, key, strlen(key), val, strlen(val), 0);
}

static mt_err savepoint_job(mt_txn *t, void *arg)
{
    (void) arg;
    mt_err rc = put_kv(t, "base", "1");
    mt_txn *sp;
    if (rc == MT_OK) {
        rc = mt_store_savepoint(t, &sp);
    }
    if (rc == MT_OK) {
        rc = put_kv(sp, "kept", "2");
    }
    if (rc == MT_OK) {
        rc = mt_store_savepoint_release(sp);
    }
    if (rc == MT_OK) {
        rc = mt_store_savepoint(t, &sp);
    }
    if (rc == MT_OK) {
        rc = put_kv(sp, "dropped", "3");
        mt_store_savepoint_rollback(sp);
    }
    if (rc == MT_OK) {
        rc = put_kv(t, "after", "4");
    }
    return rc;
}


static void expect_savepoint_outcome(mt_store *s)
{
    assert_true(kv_has(s, "base", "1"));
    assert_true(kv_has(s, "kept", "2"));
    assert_false(kv_has(s, "dropped", "3"));
    assert_true(kv_has(s, "after", "4"));
}

static void test_store_savepoint_release_keeps_and_rollback_drops(void **state)
{
    mt_store *s = open_store(state);
    assert_int_equal(mt_store_write(s, savepoint_job, NULL), MT_OK);
    expect_savepoint_outcome(s);
    save_wal(state);
    mt_store_close(s);

    /* The write-ahead records agree: a rolled-back write is not replayed. */
    restore_wal(state);
    s = open_store(state);
    expect_savepoint_outcome(s);
    mt_store_close(s);
}

/* Looks up the writer thread's data cache (a job: it runs on the writer). */
typedef struct cache_probe {
    uint64_t sequence;
    const char *text;
    json_t *got; /* a new reference, or NULL */
} cache_probe;

static mt_err run_cache_probe(mt_txn *t, void *arg)
{
    (void) t;
    cache_probe *p = arg;
    p->got = mt_datacache_get(p->sequence, p->text, strlen(p->text));
    return MT_OK;
}

/*
 * The JSON data a structured request parsed on publish reaches the writer's
 * data cache with the append, as a copy of the writer's own, once a
 * handler is open in the process: handlers on the writer convert it
 * without parsing the text again. Text data keeps nothing; the cache is
 * the writer's alone and answers only for the same text.
 */
static void test_log_append_keeps_the_parsed_data_for_handlers(void **state)
{
    mt_store *s = open_store(state);
    const char *body =
        "[{\"specversion\":\"1.0\",\"source\":\"/c\",\"id\":\"a\",\"type\":\"t\",\"data\":{\"n\":1}},"
        "{\"specversion\":\"1.0\",\"source\":\"/c\",\"id\":\"b\",\"type\":\"t\","
        "\"datacontenttype\":\"text/plain\",\"data\":\"hi\"}]";
    mt_event_batch b;
    mt_event_batch_init(&b);
    char err[256];
    assert_int_equal(mt_event_parse_batch(body, strlen(body), &b, err, sizeof err), MT_OK);
    assert_non_null(b.data[0]);
    assert_null(b.data[1]);
    append_job j;
    /* No handler in the process: nothing is kept. */
    assert_false(mt_datacache_used());
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    cache_probe p = {j.results[0].sequence, "{\"n\":1}", NULL};
    assert_int_equal(mt_store_write(s, run_cache_probe, &p), MT_OK);
    assert_null(p.got);

    mt_datacache_use(1); /* what a handler does when it opens */
    mt_event_batch_free(&b);
    mt_event_batch_init(&b);
    body = "[{\"specversion\":\"1.0\",\"source\":\"/c\",\"id\":\"a2\",\"type\":\"t\","
           "\"data\":{\"n\":1}},"
           "{\"specversion\":\"1.0\",\"source\":\"/c\",\"id\":\"b2\",\"type\":\"t\","
           "\"datacontenttype\":\"text/plain\",\"data\":\"hi\"}]";
    assert_int_equal(mt_event_parse_batch(body, strlen(body), &b, err, sizeof err), MT_OK);
    const json_t *parsed = b.data[0];
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    assert_null(b.data[0]); /* given to the writer's cache */
    p = (cache_probe){j.results[0].sequence, "{\"n\":1}", NULL};
    assert_int_equal(mt_store_write(s, run_cache_probe, &p), MT_OK);
    assert_non_null(p.got);
    assert_ptr_equal(p.got, parsed); /* the very value, not a copy */
    json_decref(p.got);
    p.text = "{\"n\":2}";
    assert_int_equal(mt_store_write(s, run_cache_probe, &p), MT_OK);
    assert_null(p.got);
    p = (cache_probe){j.results[1].sequence, "hi", NULL};
    assert_int_equal(mt_store_write(s, run_cache_probe, &p), MT_OK);
    assert_null(p.got);
    assert_null(mt_datacache_get(j.results[0].sequence, "{\"n\":1}", 7)); /* this thread's */

    /* Values made where the append runs (an emit's, on the writer) are kept as they are. */
    mt_event_batch_free(&b);
    mt_event_batch_init(&b);
    body = "[{\"specversion\":\"1.0\",\"source\":\"/c\",\"id\":\"a3\",\"type\":\"t\","
           "\"data\":{\"n\":3}}]";
    assert_int_equal(mt_event_parse_batch(body, strlen(body), &b, err, sizeof err), MT_OK);
    b.data_local = true;
    assert_int_equal(append_batch(s, &b, NULL, &j), MT_OK);
    p = (cache_probe){j.results[0].sequence, "{\"n\":3}", NULL};
    assert_int_equal(mt_store_write(s, run_cache_probe, &p), MT_OK);
    assert_ptr_equal(p.got, b.data[0]);
    json_decref(p.got);

    mt_datacache_use(-1);
    mt_event_batch_free(&b);
    size_t waiting = mt_datacache_waiting();
    mt_store_close(s);
    /*
     * The writer let the published value go when it ended: it was handed
     * back, not freed there, and is freed by the reap on this thread.
     */
    assert_true(mt_datacache_waiting() > waiting);
    mt_datacache_reap();
    assert_int_equal(mt_datacache_waiting(), 0);
}

typedef struct let_go_args {
    int n;
    size_t kept_refcount; /* of a value a second reference held when its slot was reused */
} let_go_args;

static void *give_values(void *arg)
{
    let_go_args *a = arg;
    /* A value this thread still holds when its slot is reused is not handed back. */
    mt_datacache_give(1, "1", 1, json_integer(-1));
    json_t *held = mt_datacache_get(1, "1", 1);
    mt_datacache_give(1 + 16384, "1", 1, json_integer(-2)); /* the same slot */
    a->kept_refcount = held ? held->refcount : 0;
    json_decref(held);
    for (int i = 0; i < a->n; i++) {
        mt_datacache_give((uint64_t) i + 2, "1", 1, json_integer(i));
    }
    mt_datacache_give(0, "1", 1, json_integer(-3)); /* not kept: handed back at once */
    return NULL; /* the thread's cache lets every value go as it ends */
}

/* Values given to another thread's cache wait for the reap, up to a bound past which it frees them. */
static void test_datacache_hands_foreign_values_back_to_be_freed(void **state)
{
    (void) state;
    mt_datacache_reap();
    let_go_args a = {40000, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, give_values, &a), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(a.kept_refcount, 1); /* the slot's reference went, the held one stayed */
    size_t waiting = mt_datacache_waiting();
    assert_true(waiting > 0);
    assert_true(waiting <= 16384);
    mt_datacache_reap(); /* frees them (the sanitizer build finds any left) */
    assert_int_equal(mt_datacache_waiting(), 0);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, mt_test_setup_dir, mt_test_teardown_dir)
    const struct CMUnitTest tests[] = {
        T(test_log_sequences_are_contiguous_from_one),
        T(test_log_streamversions_count_per_subject_from_zero),
        T(test_log_expected_version_success_and_conflict),
        T(test_log_expected_version_checks_once_for_a_whole_batch),
        T(test_log_expect_needs_one_common_subject),
        cmocka_unit_test(test_log_parse_expect),
        T(test_log_append_keeps_the_parsed_data_for_handlers),
        T(test_datacache_hands_foreign_values_back_to_be_freed),
        T(test_log_duplicate_source_and_id_returns_the_original),
        T(test_log_duplicate_within_one_batch),
        T(test_log_duplicates_never_fail_the_expected_version),
        T(test_log_failed_job_leaves_nothing_behind),
        T(test_log_read_pages_with_after_and_limit),
        T(test_log_read_stream_stays_in_its_subject),
        T(test_log_read_stream_reads_the_unindexed_tail_alone),
        T(test_log_stream_index_of_a_store_without_the_mark),
        T(test_log_stream_index_is_built_a_slice_per_append),
        T(test_log_get_reads_one_event),
        T(test_log_survives_close_and_reopen),
        T(test_log_replays_the_write_ahead_file_after_lmdb_lost_its_commits),
        T(test_store_put_new_and_cursor_puts),
        T(test_log_append_after_a_conflict_in_one_transaction),
        T(test_log_full_map_fails_the_job_and_keeps_the_store_intact),
        T(test_store_second_open_of_a_directory_is_eunavail),
        T(test_store_open_refuses_bad_options),
        T(test_store_creates_missing_data_directories),
        T(test_store_done_callbacks_run_in_order_on_the_completing_thread),
        T(test_store_close_runs_pending_done_callbacks),
        T(test_store_jobs_in_one_group_fail_independently),
        T(test_store_repeatable_jobs_in_one_group_fail_independently),
        T(test_store_repeatable_jobs_share_one_nested_transaction),
        T(test_store_a_long_group_makes_way_for_waiting_publishes),
        T(test_store_job_too_big_for_the_write_ahead_file_fails_alone),
        T(test_store_repeatable_job_too_big_for_the_write_ahead_file_fails_alone),
        T(test_store_group_larger_than_the_write_ahead_file_commits_every_job),
        T(test_store_repeatable_group_larger_than_the_write_ahead_file_commits_every_job),
        T(test_log_group_that_needs_a_checkpoint_to_fit_commits),
        T(test_log_accepts_keys_at_their_maximum_length),
        T(test_store_savepoint_release_keeps_and_rollback_drops),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

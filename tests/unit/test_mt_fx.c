/*
 * test_mt_fx.c - a handler's effects on a real store: buffered writes that
 * reach the transaction only on success, the savepoint an emit opens, and
 * record mode (workers): reads noted, an overlay carried to the next
 * invocation, validation that catches a changed value, and applying the
 * recorded writes (kv keys hold a NUL byte between table and key); and a
 * dispatch job primed at append time committing with the append; and the
 * subscription's state record in its JSON layout of before.
 */
#include "mt_test.h"
#include <semaphore.h>
#include "mt_fx.h"
#include "mt_log.h"
#include "mt_lua_handler.h"
#include "mt_store.h"
#include "mt_sub.h"
#include "mt_topo.h"
#include "mt_util.h"

#define MIB (1ULL << 20)

static mt_store *open_store(const char *dir)
{
    mt_store_opts o = {.dir = dir, .map_size = 64 * MIB, .wal_size = MIB, .nosync = true};
    mt_store *s = NULL;
    assert_int_equal(mt_store_open(&o, &s), MT_OK);
    return s;
}

/* A trigger event (decoded from 'b', which must outlive it): what fx needs. */
static mt_event trigger(mt_event_batch *b)
{
    const char *j = "{\"specversion\":\"1.0\",\"source\":\"/t\",\"id\":\"x\",\"type\":\"t.x\","
                    "\"subject\":\"s\"}";
    char err[256];
    mt_event_batch_init(b);
    assert_int_equal(mt_event_parse_structured(j, strlen(j), b, err, sizeof err), MT_OK);
    mt_event ev;
    assert_int_equal(mt_event_decode(b->buf.data + b->off[0], b->len[0], &ev), MT_OK);
    ev.sequence = 7;
    return ev;
}

static char *get(mt_fx *fx, const char *table, const char *key)
{
    const char *v;
    size_t len;
    mt_err rc = mt_fx_kv_get(fx, table, key, &v, &len);
    if (rc == MT_ENOTFOUND) {
        return NULL;
    }
    assert_int_equal(rc, MT_OK);
    return strndup(v, len);
}

/* 'got' (freed here) is 'want', or NULL for none. */
static void expect_text(char *got, const char *want)
{
    if (!want) {
        assert_null(got);
    } else {
        assert_non_null(got);
        assert_string_equal(got, want);
    }
    free(got);
}

static void expect(mt_fx *fx, const char *table, const char *key, const char *want)
{
    expect_text(get(fx, table, key), want);
}

static char *stored(mt_txn *t, const char *table, const char *key)
{
    char k[256];
    size_t a = strlen(table), b = strlen(key);
    memcpy(k, table, a);
    k[a] = 0;
    memcpy(k + a + 1, key, b);
    const void *v;
    size_t len;
    if (mt_store_get(t, MT_DB_KV, k, a + 1 + b, &v, &len) != MT_OK) {
        return NULL;
    }
    return strndup(v, len);
}

typedef struct step {
    const mt_event *ev;
    int phase;
} step;

/* Runs 'job' with a step on the trigger event, in one write of a fresh store. */
static void run_with_trigger(void **state, mt_store_job_fn job)
{
    mt_store *s = open_store(*state);
    mt_event_batch b;
    mt_event ev = trigger(&b);
    step st = {&ev, 0};
    assert_int_equal(mt_store_write(s, job, &st), MT_OK);
    mt_event_batch_free(&b);
    mt_store_close(s);
}

/* Buffered: own reads see own writes, the transaction sees nothing until finish. */
static mt_err buffered_job(mt_txn *t, void *arg)
{
    step *st = arg;
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "sub", st->ev);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "a", "1", 1), MT_OK);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "b", "2", 1), MT_OK);
    assert_int_equal(mt_fx_kv_del(&fx, "tbl", "b"), MT_OK);
    expect(&fx, "tbl", "a", "1");
    expect(&fx, "tbl", "b", NULL);
    assert_null(stored(t, "tbl", "a"));
    /* A failed invocation: nothing reaches the transaction. */
    assert_int_equal(mt_fx_finish(&fx, false), MT_OK);
    assert_null(stored(t, "tbl", "a"));
    mt_fx_free(&fx);
    /* A successful one: its writes do. */
    mt_fx_init_buffered(&fx, t, "sub", st->ev);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "a", "10", 2), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    char *a = stored(t, "tbl", "a");
    assert_string_equal(a, "10");
    free(a);
    return MT_OK;
}

static void test_fx_buffered_writes_reach_the_txn_only_on_success(void **state)
{
    run_with_trigger(state, buffered_job);
}

/*
 * Buffered writes to the same key replace one another, in the small array
 * and past it (more than 64 keys), and reach the transaction as the last
 * value or a delete.
 */
static mt_err many_writes_job(mt_txn *t, void *arg)
{
    step *st = arg;
    assert_int_equal(mt_store_put(t, MT_DB_KV, "tbl\0old", 7, "9", 1, 0), MT_OK);
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "sub", st->ev);
    /* In the small array: put, put again, delete, put again. */
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "a", "1", 1), MT_OK);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "a", "22", 2), MT_OK);
    expect(&fx, "tbl", "a", "22");
    assert_int_equal(mt_fx_kv_del(&fx, "tbl", "a"), MT_OK);
    expect(&fx, "tbl", "a", NULL);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "a", "333", 3), MT_OK);
    assert_int_equal(mt_fx_kv_del(&fx, "tbl", "old"), MT_OK);
    expect(&fx, "tbl", "old", NULL);
    /* Past it: 100 more keys, some written twice, some deleted. */
    for (int i = 0; i < 100; i++) {
        char key[16], val[16];
        snprintf(key, sizeof key, "k%d", i);
        snprintf(val, sizeof val, "%d", i);
        assert_int_equal(mt_fx_kv_put(&fx, "tbl", key, val, strlen(val)), MT_OK);
    }
    for (int i = 0; i < 100; i += 10) {
        char key[16], val[16];
        snprintf(key, sizeof key, "k%d", i);
        snprintf(val, sizeof val, "x%d", i);
        if (i % 20) {
            assert_int_equal(mt_fx_kv_del(&fx, "tbl", key), MT_OK);
        } else {
            assert_int_equal(mt_fx_kv_put(&fx, "tbl", key, val, strlen(val)), MT_OK);
        }
    }
    expect(&fx, "tbl", "a", "333");
    expect(&fx, "tbl", "k10", NULL);
    expect(&fx, "tbl", "k20", "x20");
    expect(&fx, "tbl", "k99", "99");
    assert_null(stored(t, "tbl", "k99"));
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    for (int i = 0; i < 100; i++) {
        char key[16], want[16];
        snprintf(key, sizeof key, "k%d", i);
        snprintf(want, sizeof want, i % 10 ? "%d" : "x%d", i);
        char *got = stored(t, "tbl", key);
        if (i % 10 == 0 && i % 20) {
            assert_null(got);
        } else {
            assert_non_null(got);
            assert_string_equal(got, want);
        }
        free(got);
    }
    char *a = stored(t, "tbl", "a");
    assert_string_equal(a, "333");
    free(a);
    assert_null(stored(t, "tbl", "old"));
    return MT_OK;
}

static void test_fx_buffered_writes_replace_one_another_past_the_small_array(void **state)
{
    run_with_trigger(state, many_writes_job);
}

static void expect_stored(mt_txn *t, const char *key, const char *want)
{
    expect_text(stored(t, "tbl", key), want);
}

static int count_visit(const char *key, size_t klen, const char *json, size_t len, void *arg)
{
    (*(int *) arg)++;
    return 0;
}

/*
 * A key read and then written back (a counter) is written where its read
 * left the kv cursor: values of another length, other keys read in
 * between, a delete, a key that was missing, many other writes that split
 * the pages around it, a scan in between (a savepoint) and a failed run
 * all leave the table as plain writes would.
 */
/* With lend_cursors, the runs of a job share one kv cursor, as a dispatch job's do. */
static bool lend_cursors;
static mt_cursor *lent;

static void init_fx(mt_fx *fx, mt_txn *t, const step *st)
{
    mt_fx_init_buffered(fx, t, "sub", st->ev);
    if (lend_cursors) {
        mt_fx_lend_cursor(fx, &lent);
    }
}

static mt_err read_then_write_job(mt_txn *t, void *arg)
{
    step *st = arg;
    char key[16], val[128];
    for (int i = 0; i < 300; i++) {
        int n = snprintf(val, sizeof val, "tbl%co%03d", 0, i); /* "tbl NUL oNNN" */
        assert_int_equal(mt_store_put(t, MT_DB_KV, val, (size_t) n, "x", 1, 0), MT_OK);
    }
    assert_int_equal(mt_store_put(t, MT_DB_KV, "tbl\0c", 5, "9", 1, 0), MT_OK);
    assert_int_equal(mt_store_put(t, MT_DB_KV, "tbl\0d", 5, "5", 1, 0), MT_OK);
    mt_fx fx;
    init_fx(&fx, t, st);
    expect(&fx, "tbl", "c", "9");
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "c", "10", 2), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    expect_stored(t, "c", "10");

    init_fx(&fx, t, st);
    expect(&fx, "tbl", "c", "10");
    expect(&fx, "tbl", "d", "5"); /* the cursor moves on */
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "c", "11", 2), MT_OK);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "d", "6", 1), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    expect_stored(t, "c", "11");
    expect_stored(t, "d", "6");

    init_fx(&fx, t, st);
    expect(&fx, "tbl", "d", "6");
    assert_int_equal(mt_fx_kv_del(&fx, "tbl", "d"), MT_OK);
    expect(&fx, "tbl", "missing", NULL);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "missing", "1", 1), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    expect_stored(t, "d", NULL);
    expect_stored(t, "missing", "1");

    /* Writes of 60 new keys of 100 bytes each, around the one read, split its page. */
    init_fx(&fx, t, st);
    expect(&fx, "tbl", "c", "11");
    memset(val, 'v', 100);
    for (int i = 0; i < 60; i++) {
        snprintf(key, sizeof key, "c%02d", i);
        assert_int_equal(mt_fx_kv_put(&fx, "tbl", key, val, 100), MT_OK);
    }
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "c", "12", 2), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    expect_stored(t, "c", "12");
    for (int i = 0; i < 60; i++) {
        snprintf(key, sizeof key, "c%02d", i);
        char *got = stored(t, "tbl", key);
        assert_non_null(got);
        assert_int_equal(strlen(got), 100);
        free(got);
    }

    /* A scan in between: a savepoint, and the write goes there. */
    init_fx(&fx, t, st);
    expect(&fx, "tbl", "c", "12");
    int seen = 0;
    assert_int_equal(mt_fx_kv_scan(&fx, "tbl", "o", 1000, count_visit, &seen), MT_OK);
    assert_int_equal(seen, 300);
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "c", "13", 2), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    expect_stored(t, "c", "13");

    /* A failed run writes nothing. */
    init_fx(&fx, t, st);
    expect(&fx, "tbl", "c", "13");
    assert_int_equal(mt_fx_kv_put(&fx, "tbl", "c", "99", 2), MT_OK);
    assert_int_equal(mt_fx_finish(&fx, false), MT_OK);
    mt_fx_free(&fx);
    expect_stored(t, "c", "13");
    mt_store_cursor_close(lent);
    lent = NULL;
    return MT_OK;
}

static void test_fx_a_key_read_then_written_lands_like_a_plain_write(void **state)
{
    lend_cursors = false;
    run_with_trigger(state, read_then_write_job);
}

static void test_fx_runs_sharing_a_kv_cursor_write_like_plain_writes(void **state)
{
    lend_cursors = true;
    run_with_trigger(state, read_then_write_job);
    lend_cursors = false;
}

/* The record of 'json' (one structured event) with the position of 'seq' in the log. */
static void expect_record_of(mt_txn *t, uint64_t seq, const char *json)
{
    mt_event_batch b;
    mt_event_batch_init(&b);
    char err[256];
    assert_int_equal(mt_event_parse_structured(json, strlen(json), &b, err, sizeof err), MT_OK);
    uint8_t k[8];
    mt_put_be64(k, seq);
    const void *v;
    size_t vl;
    assert_int_equal(mt_store_get(t, MT_DB_LOG, k, 8, &v, &vl), MT_OK);
    mt_event got;
    assert_int_equal(mt_event_decode(v, vl, &got), MT_OK);
    uint8_t *want = (uint8_t *) b.buf.data + b.off[0];
    mt_event_record_set_position(want, seq, got.streamversion, got.recordedtime_us);
    assert_int_equal(vl, b.len[0]);
    assert_memory_equal(v, want, vl);
    mt_event_batch_free(&b);
}

static uint64_t head_of(mt_txn *t)
{
    uint64_t h = 0;
    assert_int_equal(mt_log_head(t, &h), MT_OK);
    return h;
}

/*
 * Emitted events wait with the writes for the run's outcome: nothing is in
 * the log while the handler runs, a failed run leaves neither (and the next
 * run is told the same sequences), a kept one appends them at the
 * sequences the handler was told. A re-run after a crash is told the
 * original's sequence for an event already emitted (deterministic ids).
 */
static mt_err emit_job(mt_txn *t, void *arg)
{
    step *st = arg;
    uint64_t head = head_of(t);
    for (int keep = 0; keep < 2; keep++) {
        mt_fx fx;
        mt_fx_init_buffered(&fx, t, "sub", st->ev);
        assert_int_equal(mt_fx_kv_put(&fx, "tbl", "before", "1", 1), MT_OK);
        uint64_t seq = 0, seq2 = 0;
        char err[256];
        assert_int_equal(mt_fx_emit(&fx, "t.emitted", "{}", 2, NULL, 0, &seq, err, sizeof err),
                         MT_OK);
        assert_int_equal(seq, head + 1);
        assert_int_equal(mt_fx_kv_put(&fx, "tbl", "after", "2", 1), MT_OK);
        assert_int_equal(mt_fx_emit(&fx, "t.emitted", "[1]", 3, NULL, 0, &seq2, err, sizeof err),
                         MT_OK);
        assert_int_equal(seq2, head + 2);
        expect(&fx, "tbl", "before", "1");
        assert_int_equal(head_of(t), head);
        assert_int_equal(mt_fx_finish(&fx, keep), MT_OK);
        mt_fx_free(&fx);
        char *bf = stored(t, "tbl", "before"), *af = stored(t, "tbl", "after");
        if (keep) {
            assert_string_equal(bf, "1");
            assert_string_equal(af, "2");
            assert_int_equal(head_of(t), head + 2);
            expect_record_of(t, seq2,
                             "{\"specversion\":\"1.0\",\"id\":\"sub:7:1\","
                             "\"source\":\"/moontide/subscriptions/sub\",\"type\":\"t.emitted\","
                             "\"subject\":\"s\",\"causationid\":\"x\","
                             "\"correlationid\":\"x\",\"data\":[1]}");
        } else {
            assert_null(bf);
            assert_null(af);
            assert_int_equal(head_of(t), head);
        }
        free(bf);
        free(af);
    }
    /* The same trigger again: both events are in the log, nothing is added. */
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "sub", st->ev);
    uint64_t again[2];
    char err[256];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(mt_fx_emit(&fx, "t.emitted", "{}", 2, NULL, 0, &again[i], err, sizeof err),
                         MT_OK);
        assert_int_equal(again[i], head + 1 + (uint64_t) i);
    }
    assert_int_equal(fx.emitted, 2);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    assert_int_equal(head_of(t), head + 2);
    return MT_OK;
}

/* What waits for a run's outcome is bounded: a run that emits too much fails, clearly. */
static mt_err emit_bound_job(mt_txn *t, void *arg)
{
    step *st = arg;
    size_t n = 1u << 20;
    char *data = malloc(n + 3);
    assert_non_null(data);
    data[0] = '"';
    memset(data + 1, 'x', n);
    data[n + 1] = '"';
    data[n + 2] = '\0';
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "sub", st->ev);
    uint64_t seq;
    char err[256];
    int taken = 0;
    mt_err rc = MT_OK;
    while (rc == MT_OK && taken < 1000) {
        rc = mt_fx_emit(&fx, "t.big", data, n + 2, NULL, 0, &seq, err, sizeof err);
        taken += rc == MT_OK;
    }
    assert_int_equal(rc, MT_EINVAL);
    assert_int_equal(taken, MT_FX_MAX_EMITTED / (n + 2));
    assert_string_equal(err, "emit: the events emitted by one run would take more than 64 MiB");
    assert_int_equal(mt_fx_finish(&fx, false), MT_OK);
    mt_fx_free(&fx);
    free(data);
    return MT_OK;
}

static void test_fx_a_run_emits_a_bounded_amount(void **state)
{
    run_with_trigger(state, emit_bound_job);
}

/* So are its kv writes, overwrites of one key included, in buffered and record mode. */
static mt_err write_bound_job(mt_txn *t, void *arg)
{
    step *st = arg;
    size_t n = MT_FX_MAX_VALUE;
    char *value = malloc(n);
    assert_non_null(value);
    memset(value, '7', n);
    mt_fx_overlay *ov = mt_fx_overlay_new();
    for (int mode = 0; mode < 2; mode++) {
        mt_fx fx;
        if (mode == 0) {
            mt_fx_init_buffered(&fx, t, "sub", st->ev);
        } else {
            mt_fx_init_record(&fx, t, ov, "sub", st->ev);
        }
        mt_err rc = MT_OK;
        int taken = 0;
        while (rc == MT_OK && taken < 1000) {
            rc = mt_fx_kv_put(&fx, "tbl", "same", value, n);
            taken += rc == MT_OK;
        }
        assert_int_equal(rc, MT_ETOOBIG);
        assert_int_equal(taken, MT_FX_MAX_WRITTEN / (n + 8)); /* "tbl" NUL "same" */
        assert_int_equal(mt_fx_kv_del(&fx, "tbl", "same"), MT_OK); /* 8 bytes still fit */
        if (mode == 0) {
            assert_int_equal(mt_fx_finish(&fx, false), MT_OK);
        } else {
            mt_fx_effects_free(mt_fx_record_end(&fx, false));
        }
        mt_fx_free(&fx);
    }
    mt_fx_overlay_free(ov);
    free(value);
    return MT_OK;
}

static void test_fx_a_run_writes_a_bounded_amount(void **state)
{
    run_with_trigger(state, write_bound_job);
}

static void test_fx_emitted_events_wait_with_the_writes_for_the_outcome(void **state)
{
    run_with_trigger(state, emit_job);
}

/*
 * An emitted event is exactly the record a publisher would get for its
 * CloudEvent: id, source, causation, correlation, subject, embargo, data.
 * And what a publisher could not send, an emit cannot either.
 */
static mt_err emit_record_job(mt_txn *t, void *arg)
{
    step *st = arg;
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "subA", st->ev);
    uint64_t s1 = 0, s2 = 0, s3 = 0, bad = 0;
    char err[512];
    const char *data = "{\"a\":[1,2.5,\"x\\u00e9\"],\"b\":null}";
    assert_int_equal(mt_fx_emit(&fx, "t.one", data, strlen(data), NULL, 0, &s1, err, sizeof err),
                     MT_OK);
    assert_int_equal(mt_fx_emit(&fx, "t.two", NULL, 0, "other", 0, &s2, err, sizeof err), MT_OK);
    assert_int_equal(mt_fx_emit(&fx, "t.three", "7", 1, NULL, 1767323045654321LL, &s3, err,
                                sizeof err),
                     MT_OK);
    static const struct {
        const char *type, *subject, *msg;
    } refused[] = {
        {"a..b", NULL, "emit: type: 'a..b' is not a dot-separated name"},
        {"", NULL, "emit: type: must not be empty"},
        {"t.x#", NULL, "emit: type: 't.x#' is not a dot-separated name"},
        {"t.\xff", NULL, "emit: type must be a UTF-8 string"},
        {"t.ok", "\xc3", "emit: subject must be a UTF-8 string"},
        {"t.ok", "", "emit: subject: must not be empty"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        err[0] = '\0';
        assert_int_equal(mt_fx_emit(&fx, refused[i].type, "1", 1, refused[i].subject, 0, &bad,
                                    err, sizeof err),
                         MT_EINVAL);
        if (strncmp(err, refused[i].msg, strlen(refused[i].msg)) != 0) {
            print_error("refused[%zu]: got \"%s\"\n", i, err);
        }
        assert_int_equal(strncmp(err, refused[i].msg, strlen(refused[i].msg)), 0);
    }
    char *longest = malloc(MT_EVENT_MAX_SUBJECT + 2);
    assert_non_null(longest);
    memset(longest, 's', MT_EVENT_MAX_SUBJECT + 1);
    longest[MT_EVENT_MAX_SUBJECT + 1] = '\0';
    assert_int_equal(mt_fx_emit(&fx, "t.ok", "1", 1, longest, 0, &bad, err, sizeof err),
                     MT_EINVAL);
    assert_string_equal(err, "emit: subject: longer than 400 bytes");
    free(longest);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    assert_int_equal(s2, s1 + 1);
    assert_int_equal(s3, s2 + 1);
    expect_record_of(t, s1,
                     "{\"specversion\":\"1.0\",\"id\":\"subA:7:0\","
                     "\"source\":\"/moontide/subscriptions/subA\",\"type\":\"t.one\","
                     "\"subject\":\"s\",\"causationid\":\"x\",\"correlationid\":\"x\","
                     "\"data\":{\"a\":[1,2.5,\"x\\u00e9\"],\"b\":null}}");
    expect_record_of(t, s2,
                     "{\"specversion\":\"1.0\",\"id\":\"subA:7:1\","
                     "\"source\":\"/moontide/subscriptions/subA\",\"type\":\"t.two\","
                     "\"subject\":\"other\",\"causationid\":\"x\",\"correlationid\":\"x\"}");
    expect_record_of(t, s3,
                     "{\"specversion\":\"1.0\",\"id\":\"subA:7:2\","
                     "\"source\":\"/moontide/subscriptions/subA\",\"type\":\"t.three\","
                     "\"subject\":\"s\",\"causationid\":\"x\",\"correlationid\":\"x\","
                     "\"deliverafter\":\"2026-01-02T03:04:05.654321Z\",\"data\":7}");
    return MT_OK;
}

static void test_fx_an_emitted_event_is_the_record_a_publisher_gets(void **state)
{
    run_with_trigger(state, emit_record_job);
}

static mt_err put_job(mt_txn *t, void *arg)
{
    const char **kv = arg;
    char k[64];
    size_t a = strlen(kv[0]);
    memcpy(k, kv[0], a);
    k[a] = 0;
    strcpy(k + a + 1, kv[1]);
    return mt_store_put(t, MT_DB_KV, k, a + 1 + strlen(kv[1]), kv[2], strlen(kv[2]), 0);
}

typedef struct apply_args {
    const mt_event *ev;
    mt_fx_effects *e;
    mt_err want_valid;
} apply_args;

static mt_err apply_job(mt_txn *t, void *arg)
{
    apply_args *a = arg;
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "sub", a->ev);
    assert_int_equal(mt_fx_effects_validate(a->e, t), a->want_valid);
    if (a->want_valid == MT_OK) {
        assert_int_equal(mt_fx_effects_apply(a->e, &fx, true), MT_OK);
        assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    }
    mt_fx_free(&fx);
    return MT_OK;
}

static void test_fx_record_mode_notes_reads_and_validates_them(void **state)
{
    mt_store *s = open_store(*state);
    mt_event_batch b;
    mt_event ev = trigger(&b);
    const char *seed[] = {"cnt", "x", "5"};
    assert_int_equal(mt_store_write(s, put_job, (void *) seed), MT_OK);

    /* Two invocations of one worker's round: the second reads the first's write. */
    mt_txn *snap;
    assert_int_equal(mt_store_read_begin(s, &snap), MT_OK);
    mt_fx_overlay *ov = mt_fx_overlay_new();
    mt_fx fx;
    mt_fx_init_record(&fx, snap, ov, "sub", &ev);
    expect(&fx, "cnt", "x", "5");
    assert_int_equal(mt_fx_kv_put(&fx, "cnt", "x", "6", 1), MT_OK);
    expect(&fx, "cnt", "x", "6");
    mt_fx_effects *e1 = mt_fx_record_end(&fx, true);
    mt_fx_free(&fx);
    assert_non_null(e1);
    mt_fx_init_record(&fx, snap, ov, "sub", &ev);
    expect(&fx, "cnt", "x", "6"); /* from the overlay */
    assert_int_equal(mt_fx_kv_put(&fx, "cnt", "x", "7", 1), MT_OK);
    expect(&fx, "cnt", "y", NULL);
    mt_fx_effects *e2 = mt_fx_record_end(&fx, true);
    mt_fx_free(&fx);
    /* An emit cannot be recorded: the writer must run it. The run goes on
     * with 0 for the sequence, and what it writes reaches the overlay. */
    mt_fx_init_record(&fx, snap, ov, "sub", &ev);
    uint64_t seq = 99;
    char err[128];
    assert_int_equal(mt_fx_emit(&fx, "t.e", NULL, 0, NULL, 0, &seq, err, sizeof err), MT_OK);
    assert_int_equal(seq, 0);
    assert_int_equal(mt_fx_kv_put(&fx, "cnt", "z", "1", 1), MT_OK);
    assert_null(mt_fx_record_end(&fx, true));
    mt_fx_free(&fx);
    assert_int_equal(mt_fx_overlay_size(ov), 2);
    mt_fx_overlay_free(ov);
    mt_store_read_end(snap);

    /* Out of order, the second's read ("6") does not hold yet. */
    apply_args a2 = {&ev, e2, MT_ECONFLICT};
    assert_int_equal(mt_store_write(s, apply_job, &a2), MT_OK);
    apply_args a1 = {&ev, e1, MT_OK};
    assert_int_equal(mt_store_write(s, apply_job, &a1), MT_OK);
    a2.want_valid = MT_OK;
    assert_int_equal(mt_store_write(s, apply_job, &a2), MT_OK);
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    char *x = stored(t, "cnt", "x");
    assert_string_equal(x, "7"); /* the whole key, NUL and all */
    free(x);
    assert_null(stored(t, "cnt", "y"));
    mt_store_read_end(t);
    /* Someone else changes the key: e1's read no longer holds. */
    const char *other[] = {"cnt", "x", "100"};
    assert_int_equal(mt_store_write(s, put_job, (void *) other), MT_OK);
    a1.want_valid = MT_ECONFLICT;
    assert_int_equal(mt_store_write(s, apply_job, &a1), MT_OK);
    mt_fx_effects_free(e1);
    mt_fx_effects_free(e2);
    mt_event_batch_free(&b);
    mt_store_close(s);
}

/*
 * A Lua handler's kv objects: ctx.kv gives one object per name, which takes
 * no fields; integers go to the store as their digits, extremes included,
 * and come back as integers.
 */
typedef struct lua_step {
    const mt_sub_runner *r;
    void *h;
    const mt_event *ev;
} lua_step;

/* Runs the handler once on st->ev; it must succeed (its asserts are the test). */
static mt_err lua_ok_job(mt_txn *t, void *arg)
{
    lua_step *st = arg;
    mt_fx fx;
    mt_fx_init_buffered(&fx, t, "sub", st->ev);
    mt_buf error, tb;
    mt_buf_init(&error);
    mt_buf_init(&tb);
    mt_err rc = st->r->invoke(st->h, st->ev, 1, &fx, &error, &tb);
    if (rc) {
        print_error("handler failed: %s\n%s\n", mt_buf_cstr(&error), mt_buf_cstr(&tb));
    }
    assert_int_equal(rc, MT_OK);
    assert_int_equal(mt_fx_finish(&fx, true), MT_OK);
    mt_fx_free(&fx);
    mt_buf_free(&error);
    mt_buf_free(&tb);
    return MT_OK;
}

static mt_err lua_kv_job(mt_txn *t, void *arg)
{
    lua_ok_job(t, arg);
    static const char *const want[][2] = {
        {"min", "-9223372036854775808"}, {"max", "9223372036854775807"}, {"neg", "-42"},
        {"zero", "0"}, {"ten", "10"}, {"float", "1.5"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *got = stored(t, "tbl", want[i][0]);
        assert_non_null(got);
        assert_string_equal(got, want[i][1]);
        free(got);
    }
    char *other = stored(t, "other", "k");
    assert_string_equal(other, "1");
    free(other);
    return MT_OK;
}

/*
 * Opens conf's handler, runs 'job' with it on one trigger recorded at
 * 'recorded_us' (it has no time of its own) in a store of its own, closes all.
 */
static void run_lua_job_at(void **state, mt_sub_conf *conf, mt_store_job_fn job,
                           int64_t recorded_us)
{
    lua_step st = {mt_lua_sub_runner(), NULL, NULL};
    char err[256];
    assert_int_equal(st.r->open(conf, &st.h, err, sizeof err), MT_OK);
    mt_store *s = open_store(*state);
    mt_event_batch b;
    mt_event ev = trigger(&b);
    ev.recordedtime_us = recorded_us;
    st.ev = &ev;
    assert_int_equal(mt_store_write(s, job, &st), MT_OK);
    st.r->close(st.h);
    mt_sub_conf_free(conf);
    mt_event_batch_free(&b);
    mt_store_close(s);
}

static void run_lua_job(void **state, mt_sub_conf *conf, mt_store_job_fn job)
{
    run_lua_job_at(state, conf, job, 0);
}

/* ctx.now() is the trigger's time in whole ms, rounded down before 1970 too. */
static void test_fx_lua_now_is_the_triggers_time_rounded_down(void **state)
{
    static const struct {
        int64_t us;
        const char *want;
    } cases[] = {{1767323045654321LL, "1767323045654"}, {0, "0"}, {-500, "-1"}, {-1000, "-1"},
                 {-1001, "-2"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char lua[200];
        snprintf(lua, sizeof lua,
                 "return function(event, ctx)\n"
                 "  assert(ctx.now() == %s, 'ctx.now() is ' .. ctx.now())\n"
                 "  ctx.kv('tbl'):put('k', 1)\n"
                 "end\n", cases[i].want);
        run_lua_job_at(state, mt_test_lua_sub(*state, "sub", lua), lua_ok_job, cases[i].us);
    }
}

static void test_fx_lua_kv_objects_and_integers(void **state)
{
    mt_sub_conf *conf = mt_test_lua_sub(
        *state, "sub",
        "return function(event, ctx)\n"
        "  local t = ctx.kv('tbl')\n"
        "  assert(ctx.kv('tbl') == t and ctx.kv('other') ~= t, 'one object per name')\n"
        "  local ok, err = pcall(function() t.name = 'other' end)\n"
        "  assert(not ok, 'a kv object takes no fields')\n"
        "  ok, err = pcall(t.get, 'k')\n"
        "  assert(not ok and tostring(err):find('call methods with'), tostring(err))\n"
        "  for k, v in pairs({min = math.mininteger, max = math.maxinteger, neg = -42,\n"
        "                     zero = 0, ten = 10, float = 1.5}) do\n"
        "    t:put(k, v)\n"
        "    assert(t:get(k) == v and math.type(t:get(k)) == math.type(v), k)\n"
        "  end\n"
        "  ctx.kv('other'):put('k', 1)\n"
        "end\n");
    run_lua_job(state, conf, lua_kv_job);
}

/*
 * Names the engine keeps as C strings (kv keys and tables, event types
 * and subjects) are refused with a NUL byte in them, which would cut them
 * short ("a\0b" and "a\0c" were one key); a wrong key or option says what
 * is wrong with it.
 */
static void test_fx_lua_names_with_nul_and_bad_options_are_errors(void **state)
{
    mt_sub_conf *conf = mt_test_lua_sub(
        *state, "sub",
        "local function fails(want, f, ...)\n"
        "  local ok, err = pcall(f, ...)\n"
        "  assert(not ok, 'no error for ' .. want)\n"
        "  assert(tostring(err):find(want, 1, true), tostring(err))\n"
        "end\n"
        "return function(event, ctx)\n"
        "  local t = ctx.kv('tbl')\n"
        "  fails('kv put: the key contains a NUL byte', t.put, t, 'a\\0b', 1)\n"
        "  fails('kv get: the key contains a NUL byte', t.get, t, 'a\\0b')\n"
        "  fails('kv del: the key is empty', t.del, t, '')\n"
        "  fails('kv put: the key is 401 bytes, more than 400', t.put, t, ('k'):rep(401), 1)\n"
        "  fails('kv scan: the prefix contains a NUL byte', t.scan, t, 'a\\0')\n"
        "  fails('without NUL', ctx.kv, 'a\\0b')\n"
        "  local big = ('k'):rep(300)\n"
        "  local ok, err = pcall(t.put, t, big, ('x'):rep(2 * 1024 * 1024))\n"
        "  assert(not ok and tostring(err):find(\"kv put '\" .. ('k'):rep(64) .. \"...': the value \"\n"
        "         .. 'is more than 1 MiB of JSON', 1, true), tostring(err))\n"
        "  fails('ctx.emit: the event type must not contain a NUL byte', ctx.emit, 'x\\0y', {})\n"
        "  fails('ctx.emit: the event type must be a string, not number', ctx.emit, 5, {})\n"
        "  fails(\"ctx.emit options: unknown option 'subjet' (there is: subject)\",\n"
        "        ctx.emit, 'x.y', {}, {subjet = 'a'})\n"
        "  fails('ctx.emit options: subject must be a string, not table', ctx.emit, 'x.y', {},\n"
        "        {subject = {}})\n"
        "  fails('ctx.emit options: subject must not contain a NUL byte', ctx.emit, 'x.y', {},\n"
        "        {subject = 'a\\0b'})\n"
        "  fails('ctx.emit: the options must be a table, not string', ctx.emit, 'x.y', {},\n"
        "        'notatable')\n"
        "  fails('ctx.schedule: the event type is missing', ctx.schedule, 10)\n"
        "  fails(\"emit: type: 'a?b' is not a dot-separated name\", ctx.emit, 'a\\nb', {})\n"
        "  t:put('a', 1)\n"
        "  ctx.emit('x.y', {}, {subject = 'a'})\n"
        "end\n");
    run_lua_job(state, conf, lua_ok_job);
}

/* ---- a dispatch job primed when an append is queued ---- */

/* A job that holds the writer until released, so that what comes next queues behind it. */
typedef struct gate {
    sem_t entered, release;
} gate;

static mt_err gate_run(mt_txn *t, void *arg)
{
    (void) t;
    gate *g = arg;
    sem_post(&g->entered);
    sem_wait(&g->release);
    return MT_OK;
}

typedef struct appended {
    mt_event_batch b;
    mt_log_result result;
    mt_store *store;
    bool done;
    char *count; /* the handler's count for subject "s" when the append was answered */
} appended;

static mt_err append_run(mt_txn *t, void *arg)
{
    appended *a = arg;
    int64_t current;
    return mt_log_append(t, &a->b, NULL, &a->result, &current);
}

static void append_done(mt_err rc, void *arg)
{
    appended *a = arg;
    assert_int_equal(rc, MT_OK);
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(a->store, &t), MT_OK);
    a->count = stored(t, "counts", "s");
    mt_store_read_end(t);
    a->done = true;
}

static void flag_done(mt_err rc, void *arg)
{
    assert_int_equal(rc, MT_OK);
    *(bool *) arg = true;
}

static mt_err nothing_run(mt_txn *t, void *arg)
{
    (void) t;
    (void) arg;
    return MT_OK;
}

static void run_until(mt_loop *loop, const bool *flag)
{
    for (int i = 0; i < 3000 && !*flag; i++) {
        mt_loop_run_for(loop, 10);
    }
    assert_true(*flag);
}

/* Every job queued so far has run and been answered. */
static void settle(mt_loop *loop, mt_store *store)
{
    bool done = false;
    assert_int_equal(mt_store_submit(store, nothing_run, flag_done, &done), MT_OK);
    run_until(loop, &done);
}

/*
 * Appends one event on subject "s" while the writer is held, with or
 * without priming the subscriptions right after; returns the handler's
 * count for "s" as it was when the append was answered (NULL: none yet).
 */
static char *append_held(mt_loop *loop, mt_store *store, mt_subs *subs, int n, bool prime,
                         uint64_t *primed)
{
    gate g;
    sem_init(&g.entered, 0, 0);
    sem_init(&g.release, 0, 0);
    assert_int_equal(mt_store_submit(store, gate_run, NULL, &g), MT_OK);
    sem_wait(&g.entered);

    appended a = {.store = store};
    char j[160], err[256];
    snprintf(j, sizeof j,
             "{\"specversion\":\"1.0\",\"source\":\"/t\",\"id\":\"e%d\",\"type\":\"t.x\","
             "\"subject\":\"s\"}",
             n);
    mt_event_batch_init(&a.b);
    assert_int_equal(mt_event_parse_structured(j, strlen(j), &a.b, err, sizeof err), MT_OK);
    assert_int_equal(mt_store_submit_repeatable(store, append_run, append_done, &a), MT_OK);
    if (prime) {
        *primed = mt_subs_prime(subs);
    }
    sem_post(&g.release);
    run_until(loop, &a.done);
    settle(loop, store);
    mt_event_batch_free(&a.b);
    sem_destroy(&g.entered);
    sem_destroy(&g.release);
    return a.count;
}

/*
 * A registry with one subscription "count" (on t.#, counting events per
 * subject in kv table "counts") over a real store in dir/data, its
 * completions delivered by a real loop that the test runs by hand.
 */
typedef struct engine {
    char *handler, *cfg;
    mt_topo *topo;
    mt_loop *loop;
    mt_store *store;
    mt_subs *subs;
} engine;

static void engine_open(engine *e, const char *dir)
{
    e->handler = mt_test_write_file(dir, "count.lua",
                                    "return function(event, ctx)\n"
                                    "  local t = ctx.kv('counts')\n"
                                    "  t:put(event.subject, (t:get(event.subject) or 0) + 1)\n"
                                    "end\n");
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "version: 1\nsubscriptions:\n  count:\n    topics: [\"t.#\"]\n    handler: %s\n",
             e->handler);
    e->cfg = mt_test_write_file(dir, "topology.yaml", yaml);
    char data[512];
    snprintf(data, sizeof data, "%s/data", dir);
    mt_topo_errs errs = {0};
    assert_int_equal(mt_topo_load(e->cfg, &e->topo, &errs), MT_OK);
    assert_int_equal(mt_loop_new(&e->loop), MT_OK);
    e->store = open_store(data);
    mt_loop_attach_store(e->loop, e->store);
    e->subs = NULL;
}

/* Opens the registry (after the test has put what it needs in the store). */
static void engine_start(engine *e)
{
    char err[512];
    assert_int_equal(
        mt_subs_open(e->loop, e->store, e->topo, mt_lua_sub_runner(), &e->subs, err, sizeof err),
        MT_OK);
}

static void engine_close(engine *e)
{
    mt_subs_stop(e->subs);
    mt_loop_detach_store(e->loop);
    mt_store_close(e->store);
    mt_subs_close(e->subs);
    mt_loop_free(e->loop);
    mt_topo_free(e->topo);
    free(e->cfg);
    free(e->handler);
}

/*
 * mt_subs_prime, called right after an append is queued, queues the
 * subscriptions' dispatch jobs behind it: they run in the append's group,
 * so the handler's effects are committed when the append is answered.
 * Without it they come only after the kick that follows the answer. The
 * kick after a primed append then adds no job: the primed one saw it.
 */
static void test_fx_a_primed_dispatch_commits_with_the_append(void **state)
{
    engine e;
    engine_open(&e, *state);
    engine_start(&e);
    settle(e.loop, e.store);

    /* Not primed: the append is answered before the handler ran. */
    assert_null(append_held(e.loop, e.store, e.subs, 1, false, NULL));
    mt_subs_kick(e.subs);
    settle(e.loop, e.store);
    settle(e.loop, e.store);

    /* Primed: the handler's count is there when the append is answered. */
    uint64_t primed = 0;
    char *count = append_held(e.loop, e.store, e.subs, 2, true, &primed);
    assert_non_null(count);
    assert_string_equal(count, "2");
    free(count);

    /* The kick after it queues nothing; a plain kick queues a job that finds nothing. */
    mt_store_stats st0, st1, st2;
    mt_store_get_stats(e.store, &st0);
    mt_subs_kick_after(e.subs, primed);
    settle(e.loop, e.store);
    mt_store_get_stats(e.store, &st1);
    assert_int_equal(st1.jobs - st0.jobs, 1); /* settle's own */
    mt_subs_kick(e.subs);
    settle(e.loop, e.store);
    mt_store_get_stats(e.store, &st2);
    assert_int_equal(st2.jobs - st1.jobs, 2);
    engine_close(&e);
}

/* ---- the subscription's state record ---- */

typedef struct put_state {
    const char *name;
    const char *value; /* the record, as text */
} put_state;

static mt_err put_state_run(mt_txn *t, void *arg)
{
    put_state *p = arg;
    mt_event_batch b;
    mt_event_batch_init(&b);
    char err[256];
    for (int i = 1; i <= 2; i++) {
        char j[160];
        snprintf(j, sizeof j,
                 "{\"specversion\":\"1.0\",\"source\":\"/t\",\"id\":\"e%d\",\"type\":\"t.x\","
                 "\"subject\":\"s\"}",
                 i);
        if (mt_event_parse_structured(j, strlen(j), &b, err, sizeof err)) {
            return MT_EINVAL;
        }
    }
    mt_log_result r[2];
    int64_t current;
    mt_err rc = mt_log_append(t, &b, NULL, r, &current);
    mt_event_batch_free(&b);
    if (rc == MT_OK) {
        rc = mt_store_put(t, MT_DB_SUBS, p->name, strlen(p->name), p->value, strlen(p->value), 0);
    }
    return rc;
}

/*
 * A subscription's state is a binary record; one in the JSON layout of
 * earlier versions is still read (position, counters, last error) and is
 * written back in the binary layout.
 */
static void test_fx_a_json_state_record_of_before_is_read(void **state)
{
    engine e;
    engine_open(&e, *state);
    /* Two events, and a JSON state that has handled the first. */
    put_state ps = {"count", "{\"cursor\":1,\"handled\":1,\"retried\":3,\"dead\":0,"
                             "\"last_error\":\"old trouble\",\"expired\":0,\"paused\":false}"};
    assert_int_equal(mt_store_write(e.store, put_state_run, &ps), MT_OK);
    engine_start(&e);
    mt_subs_kick(e.subs);
    settle(e.loop, e.store);
    settle(e.loop, e.store);

    mt_txn *t;
    assert_int_equal(mt_store_read_begin(e.store, &t), MT_OK);
    char *count = stored(t, "counts", "s");
    assert_string_equal(count, "1"); /* only the second event */
    free(count);
    json_t *st;
    assert_int_equal(mt_subs_status(e.subs, t, "count", &st), MT_OK);
    assert_int_equal(json_integer_value(json_object_get(st, "position")), 2);
    assert_int_equal(json_integer_value(json_object_get(st, "handled")), 2);
    assert_int_equal(json_integer_value(json_object_get(st, "retried")), 3);
    assert_string_equal(json_string_value(json_object_get(st, "last_error")), "old trouble");
    json_decref(st);
    const void *v;
    size_t vl;
    assert_int_equal(mt_store_get(t, MT_DB_SUBS, "count", 5, &v, &vl), MT_OK);
    assert_int_equal(((const uint8_t *) v)[0], 2); /* written back in the binary layout */
    mt_store_read_end(t);
    engine_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fx_buffered_writes_reach_the_txn_only_on_success,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(
            test_fx_buffered_writes_replace_one_another_past_the_small_array, mt_test_setup_dir,
            mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_a_key_read_then_written_lands_like_a_plain_write,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_runs_sharing_a_kv_cursor_write_like_plain_writes,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_an_emitted_event_is_the_record_a_publisher_gets,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_a_run_emits_a_bounded_amount, mt_test_setup_dir,
                                        mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_a_run_writes_a_bounded_amount, mt_test_setup_dir,
                                        mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_emitted_events_wait_with_the_writes_for_the_outcome,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_record_mode_notes_reads_and_validates_them,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_lua_names_with_nul_and_bad_options_are_errors,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_lua_kv_objects_and_integers, mt_test_setup_dir,
                                        mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_lua_now_is_the_triggers_time_rounded_down,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_a_primed_dispatch_commits_with_the_append,
                                        mt_test_setup_dir, mt_test_teardown_dir),
        cmocka_unit_test_setup_teardown(test_fx_a_json_state_record_of_before_is_read,
                                        mt_test_setup_dir, mt_test_teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

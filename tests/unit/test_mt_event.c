/*
 * test_mt_event.c - the event: the binary record codec (layout, round trip,
 * corrupt records), the three CloudEvents parsers (structured, batch,
 * binary) with the exact error text each refusal gives, content-type
 * sniffing, and the structured JSON written back out.
 */
#include <jansson.h>
#include "mt_test.h"
#include "mt_event.h"
#include "mt_mem.h"
#include "mt_util.h"

#define N_CASES(a) (sizeof(a) / sizeof((a)[0]))

/* Record layout from mt_event.h. */
#define REC_HEADER 44
#define REC_STRINGS (REC_HEADER + 4 * MT_ATTR_COUNT)

/* The four required attributes, to start an object with. */
#define CE "\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/orders\",\"type\":\"order.created\""

static uint32_t get_u32(const uint8_t *p)
{
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) (v >> 24);
    p[1] = (uint8_t) (v >> 16);
    p[2] = (uint8_t) (v >> 8);
    p[3] = (uint8_t) v;
}

/* An event with every attribute, engine field and JSON data set. */
static void full_event(mt_event *ev)
{
    static const char data[] = "{\"a\": 1.10}";
    mt_event_init(ev);
    ev->attr[MT_ATTR_ID] = "e1";
    ev->attr[MT_ATTR_SOURCE] = "/src";
    ev->attr[MT_ATTR_TYPE] = "order.created";
    ev->attr[MT_ATTR_SUBJECT] = "order-17";
    ev->attr[MT_ATTR_TIME] = "2026-01-02T03:04:05Z";
    ev->attr[MT_ATTR_DATACONTENTTYPE] = "application/json";
    ev->attr[MT_ATTR_DATASCHEMA] = "https://example.com/order.json";
    ev->attr[MT_ATTR_DATAVERSION] = "2";
    ev->attr[MT_ATTR_CORRELATIONID] = "corr-1";
    ev->attr[MT_ATTR_CAUSATIONID] = "cause-1";
    ev->attr[MT_ATTR_TRACEPARENT] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    ev->attr[MT_ATTR_EXPIRYTIME] = "2026-01-03T00:00:00Z";
    ev->attr[MT_ATTR_DELIVERAFTER] = "2026-01-02T04:00:00Z";
    ev->attr[MT_ATTR_REPLYTO] = "order.replies";
    ev->attr[MT_ATTR_EXTENSIONS] = "{\"region\":\"eu\"}";
    ev->sequence = 42;
    ev->streamversion = 3;
    ev->recordedtime_us = 1767323045123456LL;
    ev->expiry_us = 1767398400000000LL;
    ev->deliverafter_us = 1767326400000000LL;
    ev->priority = 7;
    ev->data_kind = MT_DATA_JSON;
    ev->data = (const uint8_t *) data;
    ev->data_len = sizeof data - 1;
}

static void assert_events_equal(const mt_event *a, const mt_event *b)
{
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        if (!a->attr[i] || !b->attr[i]) {
            if (a->attr[i] != b->attr[i]) {
                print_error("attribute %s: present in one event only\n",
                            mt_event_attr_name((mt_event_attr) i));
                fail();
            }
            continue;
        }
        assert_string_equal(a->attr[i], b->attr[i]);
    }
    assert_int_equal(a->sequence, b->sequence);
    assert_int_equal(a->streamversion, b->streamversion);
    assert_int_equal(a->recordedtime_us, b->recordedtime_us);
    assert_int_equal(a->expiry_us, b->expiry_us);
    assert_int_equal(a->deliverafter_us, b->deliverafter_us);
    assert_int_equal(a->priority, b->priority);
    assert_int_equal(a->data_kind, b->data_kind);
    assert_int_equal(a->data_len, b->data_len);
    if (a->data_len) {
        assert_memory_equal(a->data, b->data, a->data_len);
    }
}

static void assert_event_is_empty(const mt_event *ev)
{
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        assert_null(ev->attr[i]);
    }
    assert_int_equal(ev->priority, -1);
    assert_int_equal(ev->data_kind, MT_DATA_NONE);
    assert_int_equal(ev->data_len, 0);
    assert_int_equal(ev->sequence, 0);
}

/* Encodes, decodes and compares; returns nothing, asserts everything. */
static void expect_round_trip(const mt_event *ev)
{
    mt_buf buf;
    mt_buf_init(&buf);
    mt_event_encode(ev, &buf);
    mt_event back;
    assert_int_equal(mt_event_decode(buf.data, buf.len, &back), MT_OK);
    assert_events_equal(ev, &back);
    mt_buf_free(&buf);
}

/* ---- attribute names ---- */

static void test_event_attr_names_are_the_cloudevents_names(void **state)
{
    (void) state;
    static const char *const want[MT_ATTR_COUNT] = {
        "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
        "dataversion", "correlationid", "causationid", "traceparent", "expirytime",
        "deliverafter", "replyto", "(extensions)",
    };
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        assert_string_equal(mt_event_attr_name((mt_event_attr) i), want[i]);
    }
}

/* ---- the record codec ---- */

static void test_event_init_marks_everything_absent(void **state)
{
    (void) state;
    mt_event ev;
    memset(&ev, 0x5a, sizeof ev);
    mt_event_init(&ev);
    assert_event_is_empty(&ev);
    assert_int_equal(ev.streamversion, 0);
    assert_int_equal(ev.expiry_us, 0);
    assert_int_equal(ev.deliverafter_us, 0);
    assert_null(ev.data);
}

static void test_event_record_round_trips_every_attribute(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);
    expect_round_trip(&ev);

    /* Each attribute alone, so a shifted string table cannot go unnoticed. */
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        mt_event one;
        mt_event_init(&one);
        one.attr[i] = ev.attr[i];
        expect_round_trip(&one);
    }

    /* Empty strings are present (length 1), not absent. */
    mt_event empty;
    mt_event_init(&empty);
    empty.attr[MT_ATTR_DATASCHEMA] = "";
    expect_round_trip(&empty);

    /* Extremes of the engine fields. */
    full_event(&ev);
    ev.sequence = UINT64_MAX;
    ev.streamversion = UINT64_MAX - 1;
    ev.recordedtime_us = INT64_MIN;
    ev.expiry_us = INT64_MAX;
    ev.deliverafter_us = -1;
    expect_round_trip(&ev);
}

/* A decoded event moved onto a copy of its record reads the copy, as a decode of it would. */
static void test_event_rebase_points_into_a_copy(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);
    ev.attr[MT_ATTR_DATASCHEMA] = NULL; /* an absent attribute stays absent */
    mt_buf buf;
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    mt_event from;
    assert_int_equal(mt_event_decode(buf.data, buf.len, &from), MT_OK);
    char *copy = malloc(buf.len);
    assert_non_null(copy);
    memcpy(copy, buf.data, buf.len);
    memset(buf.data, 'x', buf.len); /* the original is gone */
    mt_event_rebase(&from, buf.data, copy);
    mt_event want;
    assert_int_equal(mt_event_decode(copy, buf.len, &want), MT_OK);
    assert_events_equal(&from, &want);
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        assert_ptr_equal(from.attr[i], want.attr[i]);
    }
    assert_ptr_equal(from.data, want.data);
    free(copy);
    mt_buf_free(&buf);
}

static void test_event_record_layout_matches_the_header(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);
    mt_buf buf;
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    const uint8_t *p = (const uint8_t *) buf.data;
    assert_int_equal(p[0], MT_EVENT_FORMAT);
    assert_int_equal(p[1], MT_DATA_JSON);
    assert_int_equal(p[2], 7);
    assert_int_equal(p[3], 0);
    assert_int_equal(mt_get_be64(p + 4), 42);
    assert_int_equal(mt_get_be64(p + 12), 3);
    assert_int_equal(mt_get_be64(p + 20), 1767323045123456ULL);
    assert_int_equal(mt_get_be64(p + 28), 1767398400000000ULL);
    assert_int_equal(mt_get_be64(p + 36), 1767326400000000ULL);
    size_t off = REC_STRINGS;
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        size_t n = strlen(ev.attr[i]) + 1;
        assert_int_equal(get_u32(p + REC_HEADER + 4 * i), n);
        assert_memory_equal(p + off, ev.attr[i], n);
        off += n;
    }
    assert_int_equal(buf.len, off + ev.data_len);
    assert_memory_equal(p + off, ev.data, ev.data_len);
    assert_int_equal(mt_event_record_sequence(buf.data, buf.len), 42);
    mt_buf_free(&buf);

    /* Absent strings have length 0 and take no bytes. */
    mt_event_init(&ev);
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    assert_int_equal(buf.len, REC_STRINGS);
    p = (const uint8_t *) buf.data;
    assert_int_equal(p[1], MT_DATA_NONE);
    assert_int_equal(p[2], 0xff);
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        assert_int_equal(get_u32(p + REC_HEADER + 4 * i), 0);
    }
    mt_buf_free(&buf);
}

static void test_event_record_priority_absent_differs_from_zero(void **state)
{
    (void) state;
    for (int prio = -1; prio <= 9; prio++) {
        mt_event ev;
        mt_event_init(&ev);
        ev.attr[MT_ATTR_ID] = "p";
        ev.priority = prio;
        mt_buf buf;
        mt_buf_init(&buf);
        mt_event_encode(&ev, &buf);
        assert_int_equal((uint8_t) buf.data[2], prio < 0 ? 0xff : prio);
        mt_event back;
        assert_int_equal(mt_event_decode(buf.data, buf.len, &back), MT_OK);
        assert_int_equal(back.priority, prio);
        mt_buf_free(&buf);
    }
}

static void test_event_record_keeps_every_data_kind(void **state)
{
    (void) state;
    static const uint8_t binary[] = {0x00, 0xff, 0x00, 0x80, '\n', 0x00};
    static const struct {
        mt_data_kind kind;
        const uint8_t *data;
        size_t len;
    } cases[] = {
        {MT_DATA_NONE, NULL, 0},
        {MT_DATA_JSON, (const uint8_t *) "[1, 2,\n 3]", 10},
        {MT_DATA_JSON, (const uint8_t *) "9223372036854775807", 19},
        {MT_DATA_TEXT, (const uint8_t *) "hello\nworld", 11},
        {MT_DATA_TEXT, (const uint8_t *) "", 0},
        {MT_DATA_BINARY, binary, sizeof binary},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        mt_event ev;
        full_event(&ev);
        ev.data_kind = cases[i].kind;
        ev.data = cases[i].data;
        ev.data_len = cases[i].len;
        expect_round_trip(&ev);
    }
}

typedef enum corrupt_kind {
    TRUNCATE,   /* keep only 'at' bytes */
    SET_BYTE,   /* rec[at] = value */
    SET_LEN     /* length-table entry 'at' = value */
} corrupt_kind;

typedef struct corrupt_case {
    const char *what;
    corrupt_kind kind;
    size_t at;
    uint32_t value;
} corrupt_case;

static void test_event_decode_refuses_corrupt_records(void **state)
{
    (void) state;
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "abc";          /* 4 bytes at REC_STRINGS */
    ev.attr[MT_ATTR_SOURCE] = "/s";       /* 3 bytes after it */
    ev.attr[MT_ATTR_TYPE] = "t";          /* 2 bytes: the last string */
    ev.data_kind = MT_DATA_TEXT;
    ev.data = (const uint8_t *) "xyz";
    ev.data_len = 3;
    const size_t last_nul = REC_STRINGS + 4 + 3 + 2 - 1;

    const corrupt_case cases[] = {
        {"empty", TRUNCATE, 0, 0},
        {"one byte", TRUNCATE, 1, 0},
        {"cut in the fixed header", TRUNCATE, REC_HEADER - 1, 0},
        {"no length table", TRUNCATE, REC_HEADER, 0},
        {"cut in the length table", TRUNCATE, REC_STRINGS - 1, 0},
        {"length table only", TRUNCATE, REC_STRINGS, 0},
        {"cut in the first string", TRUNCATE, REC_STRINGS + 2, 0},
        {"cut before the last NUL", TRUNCATE, last_nul, 0},
        {"format 0", SET_BYTE, 0, 0},
        {"format 2", SET_BYTE, 0, 2},
        {"format 0xff", SET_BYTE, 0, 0xff},
        {"data kind 4", SET_BYTE, 1, 4},
        {"data kind 0xff", SET_BYTE, 1, 0xff},
        {"priority 10", SET_BYTE, 2, 10},
        {"priority 0xfe", SET_BYTE, 2, 0xfe},
        {"missing NUL on the last string", SET_BYTE, last_nul, 'x'},
        {"missing NUL on the first string", SET_BYTE, REC_STRINGS + 3, 'x'},
        {"length one short (no NUL)", SET_LEN, MT_ATTR_ID, 3},
        {"length one long (next string's byte)", SET_LEN, MT_ATTR_ID, 5},
        {"length past the end", SET_LEN, MT_ATTR_TYPE, 100},
        {"length 0xffffffff", SET_LEN, MT_ATTR_ID, 0xffffffffu},
        {"length of an absent attribute past the end", SET_LEN, MT_ATTR_REPLYTO, 50},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        mt_buf buf;
        mt_buf_init(&buf);
        mt_event_encode(&ev, &buf);
        uint8_t *p = (uint8_t *) buf.data;
        size_t len = buf.len;
        switch (cases[i].kind) {
        case TRUNCATE:
            len = cases[i].at;
            break;
        case SET_BYTE:
            p[cases[i].at] = (uint8_t) cases[i].value;
            break;
        case SET_LEN:
            put_u32(p + REC_HEADER + 4 * cases[i].at, cases[i].value);
            break;
        }
        mt_event out;
        full_event(&out); /* decode must reset it even when it fails */
        mt_err rc = mt_event_decode(p, len, &out);
        if (rc != MT_EINVAL) {
            print_error("corruption '%s' was accepted\n", cases[i].what);
            fail();
        }
        assert_event_is_empty(&out);
        mt_buf_free(&buf);
    }
}

static void test_event_decode_takes_the_rest_as_data(void **state)
{
    (void) state;
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "abc";
    ev.data_kind = MT_DATA_BINARY;
    ev.data = (const uint8_t *) "0123456789";
    ev.data_len = 10;
    mt_buf buf;
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    mt_event back;
    assert_int_equal(mt_event_decode(buf.data, buf.len - 4, &back), MT_OK);
    assert_int_equal(back.data_len, 6);
    assert_memory_equal(back.data, "012345", 6);
    /* Fields point into the record: zero-copy. */
    assert_ptr_equal(back.attr[MT_ATTR_ID], buf.data + REC_STRINGS);
    mt_buf_free(&buf);
}

static void test_event_record_subject_reads_only_the_subject(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);
    ev.streamversion = 31;
    mt_buf buf;
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    const char *subject = NULL;
    uint64_t version = 0;
    assert_int_equal(mt_event_record_subject(buf.data, buf.len, &subject, &version), MT_OK);
    assert_non_null(subject);
    assert_string_equal(subject, ev.attr[MT_ATTR_SUBJECT]);
    assert_int_equal(version, 31);
    mt_event back;
    assert_int_equal(mt_event_decode(buf.data, buf.len, &back), MT_OK);
    assert_ptr_equal(subject, back.attr[MT_ATTR_SUBJECT]);

    /* Cut inside the subject, or before it: refused, as decoding does. */
    size_t at = (size_t) (subject - buf.data);
    assert_int_equal(mt_event_record_subject(buf.data, at + 1, &subject, &version), MT_EINVAL);
    assert_null(subject);
    assert_int_equal(mt_event_record_subject(buf.data, at - 1, &subject, &version), MT_EINVAL);
    assert_int_equal(mt_event_record_subject(buf.data, 10, &subject, &version), MT_EINVAL);
    mt_buf_free(&buf);

    /* No subject. */
    ev.attr[MT_ATTR_SUBJECT] = NULL;
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    subject = "x";
    assert_int_equal(mt_event_record_subject(buf.data, buf.len, &subject, &version), MT_OK);
    assert_null(subject);
    mt_buf_free(&buf);
}

static void test_event_record_set_position_patches_in_place(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);
    ev.sequence = 0;
    ev.streamversion = 0;
    ev.recordedtime_us = 0;
    mt_buf buf;
    mt_buf_init(&buf);
    mt_event_encode(&ev, &buf);
    size_t len = buf.len;
    assert_int_equal(mt_event_record_sequence(buf.data, buf.len), 0);

    mt_event_record_set_position(buf.data, 1234567890123ULL, 77, 1767323045654321LL);
    assert_int_equal(buf.len, len);
    assert_int_equal(mt_event_record_sequence(buf.data, buf.len), 1234567890123ULL);
    mt_event back;
    assert_int_equal(mt_event_decode(buf.data, buf.len, &back), MT_OK);
    ev.sequence = 1234567890123ULL;
    ev.streamversion = 77;
    ev.recordedtime_us = 1767323045654321LL;
    assert_events_equal(&ev, &back);

    /* Patching again overwrites. */
    mt_event_record_set_position(buf.data, 1, 0, -5);
    assert_int_equal(mt_event_decode(buf.data, buf.len, &back), MT_OK);
    assert_int_equal(back.sequence, 1);
    assert_int_equal(back.streamversion, 0);
    assert_int_equal(back.recordedtime_us, -5);
    assert_int_equal(back.expiry_us, ev.expiry_us);

    /* Too short to hold a sequence. */
    assert_int_equal(mt_event_record_sequence(buf.data, 10), 0);
    assert_int_equal(mt_event_record_sequence(buf.data, 0), 0);
    mt_buf_free(&buf);
}

static void test_event_batch_add_appends_records_back_to_back(void **state)
{
    (void) state;
    mt_event_batch b;
    mt_event_batch_init(&b);
    char ids[20][8];
    for (int i = 0; i < 20; i++) { /* past the first growth */
        mt_event ev;
        mt_event_init(&ev);
        snprintf(ids[i], sizeof ids[i], "id%d", i);
        ev.attr[MT_ATTR_ID] = ids[i];
        mt_event_batch_add(&b, &ev);
    }
    assert_int_equal(b.count, 20);
    size_t off = 0;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(b.off[i], off);
        mt_event ev;
        assert_int_equal(mt_event_decode(b.buf.data + b.off[i], b.len[i], &ev), MT_OK);
        assert_string_equal(ev.attr[MT_ATTR_ID], ids[i]);
        off += b.len[i];
    }
    assert_int_equal(b.buf.len, off);
    mt_event_batch_free(&b);
    assert_int_equal(b.count, 0);
    assert_null(b.off);
    mt_event_batch_free(&b);
}

/* ---- structured mode ---- */

typedef struct parsed {
    mt_event_batch b;
    mt_event ev;     /* points into b */
} parsed;

/* Parses a structured body that must be valid; decodes its one record. */
static void parse_ok(parsed *p, const char *json)
{
    mt_event_batch_init(&p->b);
    char err[512] = "";
    mt_err rc = mt_event_parse_structured(json, strlen(json), &p->b, err, sizeof err);
    if (rc != MT_OK) {
        print_error("%s\nrefused: %s: %s\n", json, mt_err_str(rc), err);
    }
    assert_int_equal(rc, MT_OK);
    assert_int_equal(p->b.count, 1);
    assert_int_equal(mt_event_decode(p->b.buf.data, p->b.len[0], &p->ev), MT_OK);
    /* Positions are left for the log writer. */
    assert_int_equal(p->ev.sequence, 0);
    assert_int_equal(p->ev.streamversion, 0);
    assert_int_equal(p->ev.recordedtime_us, 0);
}

static void parsed_free(parsed *p)
{
    mt_event_batch_free(&p->b);
}

static void assert_data(const mt_event *ev, mt_data_kind kind, const char *bytes, size_t len)
{
    assert_int_equal(ev->data_kind, kind);
    assert_int_equal(ev->data_len, len);
    if (len) {
        assert_memory_equal(ev->data, bytes, len);
    }
}

#define assert_data_str(ev, kind, s) assert_data((ev), (kind), (s), strlen(s))

typedef struct err_case {
    const char *json;
    const char *err;   /* the whole message */
} err_case;

typedef mt_err (*body_parser)(const char *body, size_t len, mt_event_batch *b, char *err,
                              size_t errlen);

/* Parses a batch that must hold 'count' events into 'b' (initialised here). */
static void parse_batch_ok(const char *json, mt_event_batch *b, int count)
{
    mt_event_batch_init(b);
    char err[256] = "";
    if (mt_event_parse_batch(json, strlen(json), b, err, sizeof err) != MT_OK) {
        fail_msg("batch refused: %s", err);
    }
    assert_int_equal(b->count, count);
}

/* Decodes event i of a parsed batch. */
static void batch_event(const mt_event_batch *b, int i, mt_event *ev)
{
    assert_int_equal(mt_event_decode(b->buf.data + b->off[i], b->len[i], ev), MT_OK);
}

static void expect_errors(body_parser parse, const err_case *cases, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        mt_event_batch b;
        mt_event_batch_init(&b);
        char err[512] = "";
        mt_err rc = parse(cases[i].json, strlen(cases[i].json), &b, err, sizeof err);
        if (rc != MT_EINVAL || strcmp(err, cases[i].err) != 0) {
            print_error("%s\ngot %s: '%s'\nwant invalid: '%s'\n", cases[i].json, mt_err_str(rc),
                        err, cases[i].err);
            bad++;
        }
        mt_event_batch_free(&b);
    }
    if (bad) {
        fail_msg("%d of %zu cases failed", bad, n);
    }
}

/*
 * Like expect_errors (every case is tried; mismatches are listed), but the
 * message need only start with 'err'.
 */
static void expect_error_prefixes(body_parser parse, const err_case *cases, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        mt_event_batch b;
        mt_event_batch_init(&b);
        char err[512] = "";
        mt_err rc = parse(cases[i].json, strlen(cases[i].json), &b, err, sizeof err);
        if (rc != MT_EINVAL || strncmp(err, cases[i].err, strlen(cases[i].err)) != 0) {
            print_error("%s\ngot %s: '%s'\nwant invalid: '%s...'\n", cases[i].json,
                        mt_err_str(rc), err, cases[i].err);
            bad++;
        }
        mt_event_batch_free(&b);
    }
    if (bad) {
        fail_msg("%d of %zu cases failed", bad, n);
    }
}

static void test_event_structured_minimal_event(void **state)
{
    (void) state;
    parsed p;
    parse_ok(&p, "{" CE "}");
    assert_string_equal(p.ev.attr[MT_ATTR_ID], "e1");
    assert_string_equal(p.ev.attr[MT_ATTR_SOURCE], "/orders");
    assert_string_equal(p.ev.attr[MT_ATTR_TYPE], "order.created");
    for (int i = MT_ATTR_SUBJECT; i < MT_ATTR_COUNT; i++) {
        assert_null(p.ev.attr[i]);
    }
    assert_int_equal(p.ev.priority, -1);
    assert_int_equal(p.ev.expiry_us, 0);
    assert_int_equal(p.ev.deliverafter_us, 0);
    assert_data(&p.ev, MT_DATA_NONE, NULL, 0);
    parsed_free(&p);

    /* Whitespace anywhere JSON allows it; member order does not matter. */
    parse_ok(&p, " \n\t{ \"type\" : \"a\" ,\r\n \"id\":\"x\", \"source\":\"s\",\"specversion\""
                 ":\"1.0\" }\n ");
    assert_string_equal(p.ev.attr[MT_ATTR_ID], "x");
    assert_string_equal(p.ev.attr[MT_ATTR_TYPE], "a");
    parsed_free(&p);
}

static void test_event_structured_reads_every_attribute(void **state)
{
    (void) state;
    parsed p;
    parse_ok(&p, "{" CE ","
                 "\"subject\":\"order-17\","
                 "\"time\":\"2026-01-02T03:04:05Z\","
                 "\"datacontenttype\":\"application/json\","
                 "\"dataschema\":\"https://example.com/s.json\","
                 "\"dataversion\":\"2\","
                 "\"correlationid\":\"corr-1\","
                 "\"causationid\":\"cause-1\","
                 "\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\","
                 "\"priority\":7,"
                 "\"expirytime\":\"2026-01-03T00:00:00+01:00\","
                 "\"deliverafter\":\"2026-01-02T04:00:00Z\","
                 "\"replyto\":\"order.replies\","
                 "\"data\":{\"n\":1}}");
    const mt_event *ev = &p.ev;
    assert_string_equal(ev->attr[MT_ATTR_SUBJECT], "order-17");
    assert_string_equal(ev->attr[MT_ATTR_TIME], "2026-01-02T03:04:05Z");
    assert_string_equal(ev->attr[MT_ATTR_DATACONTENTTYPE], "application/json");
    assert_string_equal(ev->attr[MT_ATTR_DATASCHEMA], "https://example.com/s.json");
    assert_string_equal(ev->attr[MT_ATTR_DATAVERSION], "2");
    assert_string_equal(ev->attr[MT_ATTR_CORRELATIONID], "corr-1");
    assert_string_equal(ev->attr[MT_ATTR_CAUSATIONID], "cause-1");
    assert_string_equal(ev->attr[MT_ATTR_TRACEPARENT],
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_string_equal(ev->attr[MT_ATTR_EXPIRYTIME], "2026-01-03T00:00:00+01:00");
    assert_string_equal(ev->attr[MT_ATTR_DELIVERAFTER], "2026-01-02T04:00:00Z");
    assert_string_equal(ev->attr[MT_ATTR_REPLYTO], "order.replies");
    assert_null(ev->attr[MT_ATTR_EXTENSIONS]);
    assert_int_equal(ev->priority, 7);
    /* The times are also kept as microseconds (expiry 2026-01-02T23:00:00Z). */
    assert_int_equal(ev->expiry_us, 1767394800000000LL);
    assert_int_equal(ev->deliverafter_us, 1767326400000000LL);
    assert_data_str(ev, MT_DATA_JSON, "{\"n\":1}");
    parsed_free(&p);
}

static void test_event_structured_priority_forms(void **state)
{
    (void) state;
    static const struct {
        const char *value;
        int want;
    } ok[] = {{"0", 0}, {"9", 9}, {"\"0\"", 0}, {"\"5\"", 5}, {"null", -1}};
    for (size_t i = 0; i < N_CASES(ok); i++) {
        char json[256];
        snprintf(json, sizeof json, "{" CE ",\"priority\":%s}", ok[i].value);
        parsed p;
        parse_ok(&p, json);
        assert_int_equal(p.ev.priority, ok[i].want);
        parsed_free(&p);
    }
    static const err_case bad[] = {
        {"{" CE ",\"priority\":10}", "priority: 10 is out of range 0-9"},
        {"{" CE ",\"priority\":-1}", "priority: -1 is out of range 0-9"},
        {"{" CE ",\"priority\":\"10\"}", "priority: must be an integer from 0 to 9"},
        {"{" CE ",\"priority\":\"x\"}", "priority: must be an integer from 0 to 9"},
        {"{" CE ",\"priority\":\"\"}", "priority: must be an integer from 0 to 9"},
        {"{" CE ",\"priority\":1.5}", "priority: must be an integer from 0 to 9"},
        {"{" CE ",\"priority\":true}", "priority: must be an integer from 0 to 9"},
        {"{" CE ",\"priority\":[1]}", "priority: must be an integer from 0 to 9"},
    };
    expect_errors(mt_event_parse_structured, bad, N_CASES(bad));
}

static void test_event_structured_missing_required_attribute_is_named(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{\"id\":\"e1\",\"source\":\"/s\",\"type\":\"t\"}",
         "specversion: required attribute is missing"},
        {"{\"specversion\":\"1.0\",\"source\":\"/s\",\"type\":\"t\"}",
         "id: required attribute is missing"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"type\":\"t\"}",
         "source: required attribute is missing"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\"}",
         "type: required attribute is missing"},
        {"{}", "specversion: required attribute is missing"},
        /* null is absent */
        {"{\"specversion\":\"1.0\",\"id\":null,\"source\":\"/s\",\"type\":\"t\"}",
         "id: required attribute is missing"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":null,\"type\":\"t\"}",
         "source: required attribute is missing"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\",\"type\":null}",
         "type: required attribute is missing"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_wrong_types_and_values_are_named(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{\"specversion\":\"0.3\",\"id\":\"e1\",\"source\":\"/s\",\"type\":\"t\"}",
         "specversion: must be \"1.0\""},
        {"{\"specversion\":1.0,\"id\":\"e1\",\"source\":\"/s\",\"type\":\"t\"}",
         "specversion: must be \"1.0\""},
        {"{\"specversion\":\"1.0\",\"id\":5,\"source\":\"/s\",\"type\":\"t\"}",
         "id: must be a string"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":{},\"type\":\"t\"}",
         "source: must be a string"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\",\"type\":[\"t\"]}",
         "type: must be a string"},
        {"{\"specversion\":\"1.0\",\"id\":\"\",\"source\":\"/s\",\"type\":\"t\"}",
         "id: must not be empty"},
        {"{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"\",\"type\":\"t\"}",
         "source: must not be empty"},
        {"{" CE ",\"subject\":\"\"}", "subject: must not be empty"},
        {"{" CE ",\"subject\":true}", "subject: must be a string"},
        {"{" CE ",\"time\":\"yesterday\"}",
         "time: 'yesterday' is not an RFC 3339 timestamp"},
        {"{" CE ",\"time\":\"2023-02-29T00:00:00Z\"}",
         "time: '2023-02-29T00:00:00Z' is not an RFC 3339 timestamp"},
        {"{" CE ",\"time\":1767323045}", "time: must be a string"},
        {"{" CE ",\"expirytime\":\"soon\"}", "expirytime: 'soon' is not an RFC 3339 timestamp"},
        {"{" CE ",\"deliverafter\":\"2026-01-02\"}",
         "deliverafter: '2026-01-02' is not an RFC 3339 timestamp"},
        {"{" CE ",\"replyto\":\"a b\"}", "replyto: 'a b' is not a topic name"},
        {"{" CE ",\"replyto\":\"a.*\"}", "replyto: 'a.*' is not a topic name"},
        {"{" CE ",\"datacontenttype\":7}", "datacontenttype: must be a string"},
        {"{" CE ",\"data_base64\":7}", "data_base64: must be a base64 string"},
        {"{" CE ",\"data_base64\":null}", "data_base64: must be a base64 string"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_type_must_be_a_dotted_name(void **state)
{
    (void) state;
    static const char *const good[] = {"a", "order.created", "a.b.c.d", "A-b_c.9", "x/y"};
    for (size_t i = 0; i < N_CASES(good); i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\",\"type\":\"%s\"}",
                 good[i]);
        parsed p;
        parse_ok(&p, json);
        assert_string_equal(p.ev.attr[MT_ATTR_TYPE], good[i]);
        parsed_free(&p);
    }
    static const char *const bad[] = {".a", "a.", "a..b", "a.*", "#", "a b", "a\\tb", "."};
    for (size_t i = 0; i < N_CASES(bad); i++) {
        char json[256], want[256];
        snprintf(json, sizeof json,
                 "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\",\"type\":\"%s\"}",
                 bad[i]);
        snprintf(want, sizeof want, "type: '%s' is not a dot-separated name "
                 "(no empty words, spaces, '*' or '#')",
                 strcmp(bad[i], "a\\tb") == 0 ? "a?b" : bad[i]); /* quoted on one line */
        const err_case c = {json, want};
        expect_errors(mt_event_parse_structured, &c, 1);
    }
    static const err_case empty[] = {
        {"{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\",\"type\":\"\"}",
         "type: must not be empty"},
    };
    expect_errors(mt_event_parse_structured, empty, 1);
}

/* A valid event plus "name": a string of exactly 'n' bytes (caller frees). */
static char *event_with_attr(const char *name, size_t n)
{
    char *json = malloc(n + 256);
    assert_non_null(json);
    int k = sprintf(json, "{" CE ",\"%s\":\"", name);
    memset(json + k, 'a', n);
    strcpy(json + k + n, "\"}");
    return json;
}

static void test_event_structured_length_limits_per_attribute(void **state)
{
    (void) state;
    static const struct {
        const char *name;
        size_t max;
    } limits[] = {
        {"subject", MT_EVENT_MAX_SUBJECT},
        {"dataschema", MT_EVENT_MAX_ATTR},
        {"correlationid", MT_EVENT_MAX_ID},
        {"causationid", MT_EVENT_MAX_ID},
        {"myext", MT_EVENT_MAX_ATTR},
    };
    for (size_t i = 0; i < N_CASES(limits); i++) {
        char *json = event_with_attr(limits[i].name, limits[i].max);
        parsed p;
        parse_ok(&p, json);
        parsed_free(&p);
        free(json);

        json = event_with_attr(limits[i].name, limits[i].max + 1);
        char want[128];
        snprintf(want, sizeof want, "%s: longer than %zu bytes", limits[i].name, limits[i].max);
        const err_case c = {json, want};
        expect_errors(mt_event_parse_structured, &c, 1);
        free(json);
    }

    /* The required attributes, built by hand. */
    static const struct {
        const char *fmt;
        const char *name;
        size_t max;
    } req[] = {
        {"{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"s\",\"type\":\"t\"}", "id",
         MT_EVENT_MAX_ID},
        {"{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"%s\",\"type\":\"t\"}", "source",
         MT_EVENT_MAX_SOURCE},
        {"{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\",\"type\":\"%s\"}", "type",
         MT_EVENT_MAX_TYPE},
    };
    for (size_t i = 0; i < N_CASES(req); i++) {
        for (size_t n = req[i].max; n <= req[i].max + 1; n++) {
            char v[512];
            memset(v, 'a', n);
            v[n] = '\0';
            char json[1024];
            snprintf(json, sizeof json, req[i].fmt, v);
            mt_event_batch b;
            mt_event_batch_init(&b);
            char err[256] = "";
            mt_err rc = mt_event_parse_structured(json, strlen(json), &b, err, sizeof err);
            if (n == req[i].max) {
                assert_int_equal(rc, MT_OK);
            } else {
                char want[128];
                snprintf(want, sizeof want, "%s: longer than %zu bytes", req[i].name,
                         req[i].max);
                assert_int_equal(rc, MT_EINVAL);
                assert_string_equal(err, want);
            }
            mt_event_batch_free(&b);
        }
    }
}

static void test_event_structured_null_attributes_are_absent(void **state)
{
    (void) state;
    parsed p;
    parse_ok(&p, "{" CE ",\"subject\":null,\"time\":null,\"datacontenttype\":null,"
                 "\"priority\":null,\"expirytime\":null,\"replyto\":null,\"myext\":null,"
                 "\"data\":null}");
    for (int i = MT_ATTR_SUBJECT; i < MT_ATTR_COUNT; i++) {
        assert_null(p.ev.attr[i]);
    }
    assert_int_equal(p.ev.priority, -1);
    assert_int_equal(p.ev.expiry_us, 0);
    assert_data(&p.ev, MT_DATA_NONE, NULL, 0);
    parsed_free(&p);
}

static void test_event_structured_refuses_engine_attributes(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{" CE ",\"sequence\":\"1\"}",
         "sequence: is assigned by the engine and cannot be published"},
        {"{" CE ",\"sequence\":1}",
         "sequence: is assigned by the engine and cannot be published"},
        {"{" CE ",\"streamversion\":0}",
         "streamversion: is assigned by the engine and cannot be published"},
        {"{" CE ",\"recordedtime\":\"2026-01-02T03:04:05Z\"}",
         "recordedtime: is assigned by the engine and cannot be published"},
        /* Even null: the publisher is trying to set it. */
        {"{" CE ",\"sequence\":null}",
         "sequence: is assigned by the engine and cannot be published"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_keeps_extension_attributes(void **state)
{
    (void) state;
    parsed p;
    parse_ok(&p, "{" CE ",\"region\":\"eu\",\"tries\":3,\"urgent\":true,\"big\":"
                 "9223372036854775807,\"neg\":-2,\"off\":false,\"x0123456789abcdefghi\":\"20\"}");
    assert_string_equal(p.ev.attr[MT_ATTR_EXTENSIONS],
                        "{\"region\":\"eu\",\"tries\":3,\"urgent\":true,"
                        "\"big\":9223372036854775807,\"neg\":-2,\"off\":false,"
                        "\"x0123456789abcdefghi\":\"20\"}");
    parsed_free(&p);
}

static void test_event_structured_refuses_bad_extensions(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{" CE ",\"meta\":{\"a\":1}}",
         "meta: an extension attribute must be a string, integer or boolean"},
        {"{" CE ",\"tags\":[\"a\"]}",
         "tags: an extension attribute must be a string, integer or boolean"},
        {"{" CE ",\"ratio\":1.5}",
         "ratio: an extension attribute must be a string, integer or boolean"},
        {"{" CE ",\"Region\":\"eu\"}",
         "'Region' is not a valid attribute name (a-z, 0-9, at most 20)"},
        {"{" CE ",\"my-ext\":\"x\"}",
         "'my-ext' is not a valid attribute name (a-z, 0-9, at most 20)"},
        {"{" CE ",\"my_ext\":\"x\"}",
         "'my_ext' is not a valid attribute name (a-z, 0-9, at most 20)"},
        {"{" CE ",\"x0123456789abcdefghij\":\"x\"}",
         "'x0123456789abcdefghij' is not a valid attribute name (a-z, 0-9, at most 20)"},
        {"{" CE ",\"\":\"x\"}", "'' is not a valid attribute name (a-z, 0-9, at most 20)"},
        {"{" CE ",\"caf\xc3\xa9\":\"x\"}",
         "'caf\xc3\xa9' is not a valid attribute name (a-z, 0-9, at most 20)"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_extensions_are_bounded_in_total(void **state)
{
    (void) state;
    /* Five extensions of 4000 bytes: each within its limit, together over 16 KiB. */
    mt_buf json;
    mt_buf_init(&json);
    mt_buf_adds(&json, "{" CE);
    char v[4001];
    memset(v, 'v', 4000);
    v[4000] = '\0';
    for (int i = 0; i < 5; i++) {
        mt_buf_addf(&json, ",\"ext%d\":\"%s\"", i, v);
    }
    mt_buf_adds(&json, "}");
    const err_case c = {mt_buf_cstr(&json), "extension attributes take more than 16384 bytes"};
    expect_errors(mt_event_parse_structured, &c, 1);
    mt_buf_free(&json);
}

static void test_event_structured_refuses_duplicate_attributes(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{" CE ",\"id\":\"e2\"}", "id: attribute appears twice"},
        {"{" CE ",\"subject\":\"a\",\"subject\":\"a\"}", "subject: attribute appears twice"},
        {"{" CE ",\"myext\":1,\"myext\":2}", "myext: attribute appears twice"},
        {"{" CE ",\"data\":1,\"data\":2}", "data: attribute appears twice"},
        {"{" CE ",\"data_base64\":\"\",\"data_base64\":\"\"}",
         "data_base64: attribute appears twice"},
        /* The same name spelled with an escape is the same name. */
        {"{" CE ",\"\\u0069d\":\"e2\"}", "id: attribute appears twice"},
        /* null still counts as given */
        {"{" CE ",\"subject\":null,\"subject\":\"a\"}", "subject: attribute appears twice"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

/*
 * Plain strings (printable ASCII without quotes or backslashes) are copied
 * from the body; any other is decoded by jansson. Both read alike, in names
 * and in values, side by side in one event and across a batch.
 */
static void test_event_structured_plain_and_escaped_strings_read_alike(void **state)
{
    (void) state;
    parsed p;
    parse_ok(&p, "{\"specversion\":\"1.0\",\"\\u0069d\":\"e\\u0031\",\"source\":\"/caf\\u00e9\","
                 "\"type\":\"order.created\",\"subject\":\"tab\\there\",\"myext\":\"\\\"q\\\"\","
                 "\"other\":\"plain\"}");
    assert_string_equal(p.ev.attr[MT_ATTR_ID], "e1");
    assert_string_equal(p.ev.attr[MT_ATTR_SOURCE], "/caf\xc3\xa9");
    assert_string_equal(p.ev.attr[MT_ATTR_TYPE], "order.created");
    assert_string_equal(p.ev.attr[MT_ATTR_SUBJECT], "tab\there");
    assert_string_equal(p.ev.attr[MT_ATTR_EXTENSIONS], "{\"myext\":\"\\\"q\\\"\",\"other\":\"plain\"}");
    parsed_free(&p);

    /* Raw UTF-8 and DEL are not plain: jansson checks and decodes them. */
    parse_ok(&p, "{" CE ",\"subject\":\"\xc3\xa9\x7f\"}");
    assert_string_equal(p.ev.attr[MT_ATTR_SUBJECT], "\xc3\xa9\x7f");
    parsed_free(&p);
    static const err_case bad[] = {
        {"{" CE ",\"subject\":\"\xff\"}", "subject: malformed JSON at byte 84: unable to decode"},
        {"{" CE ",\"subject\":\"a\nb\"}", "subject: malformed JSON at byte 85: unexpected newline"},
        {"{" CE ",\"subject\":\"unterminated}", "subject: malformed JSON at byte 97: premature end"},
    };
    expect_error_prefixes(mt_event_parse_structured, bad, N_CASES(bad));

    /* Each event of a batch reads its own strings, escaped or plain. */
    const char *json = "[{\"specversion\":\"1.0\",\"id\":\"\\u0061\",\"source\":\"/s\",\"type\":\"t\","
                       "\"subject\":\"first\\u0021\"},"
                       "{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\","
                       "\"subject\":\"second\"}]";
    mt_event_batch b;
    parse_batch_ok(json, &b, 2);
    mt_event ev;
    batch_event(&b, 0, &ev);
    assert_string_equal(ev.attr[MT_ATTR_ID], "a");
    assert_string_equal(ev.attr[MT_ATTR_SUBJECT], "first!");
    batch_event(&b, 1, &ev);
    assert_string_equal(ev.attr[MT_ATTR_ID], "b");
    assert_string_equal(ev.attr[MT_ATTR_SUBJECT], "second");
    mt_event_batch_free(&b);
}

/* Duplicates are found however many members an event has. */
static void test_event_structured_duplicates_among_many_members(void **state)
{
    (void) state;
    for (int dup = 0; dup < 40; dup += 13) {
        mt_buf json;
        mt_buf_init(&json);
        mt_buf_adds(&json, "{" CE);
        for (int i = 0; i < 40; i++) {
            mt_buf_addf(&json, ",\"x%d\":%d", i, i);
        }
        mt_buf_addf(&json, ",\"x%d\":\"again\"}", dup);
        char want[64];
        snprintf(want, sizeof want, "x%d: attribute appears twice", dup);
        const err_case c = {mt_buf_cstr(&json), want};
        expect_errors(mt_event_parse_structured, &c, 1);
        mt_buf_free(&json);
    }
    /* Forty distinct extensions are accepted. */
    mt_buf json;
    mt_buf_init(&json);
    mt_buf_adds(&json, "{" CE);
    for (int i = 0; i < 40; i++) {
        mt_buf_addf(&json, ",\"x%d\":%d", i, i);
    }
    mt_buf_adds(&json, "}");
    parsed p;
    parse_ok(&p, mt_buf_cstr(&json));
    assert_non_null(strstr(p.ev.attr[MT_ATTR_EXTENSIONS], "\"x39\":39"));
    parsed_free(&p);
    mt_buf_free(&json);
}

static void test_event_structured_keeps_json_data_as_exact_text(void **state)
{
    (void) state;
    static const char *const data[] = {
        "{\"a\": 1.10, \"b\": 9223372036854775807}",
        "{ \"nested\" : [ 1 , 2.50 , {\"c\" : -9223372036854775808} ] }",
        "[]",
        "\"just a string\"",
        "\"caf\\u00e9 \\n\"",
        "1.0e+2",
        "-0",
        "true",
        "false",
        "{}",
    };
    for (size_t i = 0; i < N_CASES(data); i++) {
        char json[512];
        snprintf(json, sizeof json, "{" CE ",\"data\":%s}", data[i]);
        parsed p;
        parse_ok(&p, json);
        assert_data_str(&p.ev, MT_DATA_JSON, data[i]);
        parsed_free(&p);

        /* Surrounding whitespace is not part of the data; data may come first. */
        snprintf(json, sizeof json, "{ \"data\" :\n  %s \n, " CE "}", data[i]);
        parse_ok(&p, json);
        assert_data_str(&p.ev, MT_DATA_JSON, data[i]);
        parsed_free(&p);
    }
}

static void test_event_structured_refuses_integers_beyond_int64(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{" CE ",\"data\":{\"b\": 9223372036854775808}}", "data: malformed JSON at byte "},
        {"{" CE ",\"data\":[1, -9223372036854775809]}", "data: malformed JSON at byte "},
        {"{" CE ",\"data\":18446744073709551616}", "data: malformed JSON at byte "},
        {"{" CE ",\"big\":9223372036854775808}", "big: malformed JSON at byte "},
    };
    expect_error_prefixes(mt_event_parse_structured, cases, N_CASES(cases));
    mt_event_batch b;
    mt_event_batch_init(&b);
    char err[256];
    const char *json = "{" CE ",\"data\":{\"b\": 9223372036854775808}}";
    assert_int_equal(mt_event_parse_structured(json, strlen(json), &b, err, sizeof err),
                     MT_EINVAL);
    assert_non_null(strstr(err, "too big integer"));
    assert_int_equal(b.count, 0);
    mt_event_batch_free(&b);
}

static void test_event_structured_refuses_malformed_json(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"", "expected a JSON object at byte 0"},
        {"   ", "expected a JSON object at byte 3"},
        {"[]", "expected a JSON object at byte 0"},
        {"\"event\"", "expected a JSON object at byte 0"},
        {"{" CE ",}", "malformed JSON at byte 73: expected an attribute name"},
        {"{" CE "", "malformed JSON at byte 72: expected ',' or '}'"},
        {"{" CE " \"x\":1}", "malformed JSON at byte 73: expected ',' or '}'"},
        {"{\"id\" \"e1\"}", "malformed JSON at byte 6: expected ':'"},
        {"{id:\"e1\"}", "malformed JSON at byte 1: expected an attribute name"},
        {"{" CE "} {}", "malformed JSON at byte 74: unexpected data after the end"},
        {"{" CE "}x", "malformed JSON at byte 73: unexpected data after the end"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
    static const err_case prefixed[] = {
        {"{" CE ",\"data\":{\"a\":}}", "data: malformed JSON at byte "},
        {"{" CE ",\"data\":tru}", "data: malformed JSON at byte "},
        {"{" CE ",\"subject\":\"unterminated}", "subject: malformed JSON at byte "},
        {"{" CE ",\"subject\":\"\xff\"}", "subject: malformed JSON at byte "},
        {"{" CE ",\"subject\":\"a\\u0000b\"}", "subject: a NUL character (\\u0000) at byte "},
        {"{" CE ",\"a\\u0000b\":1}", "an attribute name: a NUL character (\\u0000) at byte "},
        {"{" CE ",\"data\":{\"a\\u0000b\":1}}", "data: malformed JSON at byte "},
    };
    expect_error_prefixes(mt_event_parse_structured, prefixed, N_CASES(prefixed));
    /* A string in data may hold a NUL; the data's text is kept as sent. */
    parsed p;
    parse_ok(&p, "{" CE ",\"data\":\"a\\u0000b\"}");
    assert_int_equal(p.ev.data_len, 10);
    assert_memory_equal(p.ev.data, "\"a\\u0000b\"", 10);
    parsed_free(&p);
}

static void test_event_structured_refuses_data_and_data_base64_together(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{" CE ",\"data\":1,\"data_base64\":\"aGk=\"}",
         "'data' and 'data_base64' are mutually exclusive"},
        {"{\"data_base64\":\"aGk=\"," CE ",\"data\":\"hi\"}",
         "'data' and 'data_base64' are mutually exclusive"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_decodes_data_base64(void **state)
{
    (void) state;
    static const struct {
        const char *b64;
        const char *bytes;
        size_t len;
    } cases[] = {
        {"aGVsbG8h", "hello!", 6},    /* no padding needed */
        {"aGVsbG8=", "hello", 5},     /* one '=' */
        {"aGVsbA==", "hell", 4},      /* two '=' */
        {"aGk=", "hi", 2},
        {"aA==", "h", 1},
        {"AP8A", "\x00\xff\x00", 3},
        {"AAAA", "\x00\x00\x00", 3},
        {"", "", 0},
        {"+/+/", "\xfb\xff\xbf", 3},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        char json[256];
        snprintf(json, sizeof json, "{" CE ",\"data_base64\":\"%s\"}", cases[i].b64);
        parsed p;
        parse_ok(&p, json);
        assert_data(&p.ev, MT_DATA_BINARY, cases[i].bytes, cases[i].len);
        parsed_free(&p);
    }
}

static void test_event_structured_refuses_unpadded_or_bad_length_base64(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"{" CE ",\"data_base64\":\"aGk\"}",
         "data_base64: is not valid base64 (length 3 is not a multiple of 4)"},
        {"{" CE ",\"data_base64\":\"aA\"}",
         "data_base64: is not valid base64 (length 2 is not a multiple of 4)"},
        {"{" CE ",\"data_base64\":\"a\"}",
         "data_base64: is not valid base64 (length 1 is not a multiple of 4)"},
        {"{" CE ",\"data_base64\":\"aGk=a\"}",
         "data_base64: is not valid base64 (length 5 is not a multiple of 4)"},
        {"{" CE ",\"data_base64\":\"a$k=\"}", "data_base64: is not valid base64"},
        {"{" CE ",\"data_base64\":\"a-_b\"}", "data_base64: is not valid base64"},
        {"{" CE ",\"data_base64\":\"aGk\\u00e9\"}",
         "data_base64: is not valid base64 (length 5 is not a multiple of 4)"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_refuses_misplaced_base64_padding(void **state)
{
    (void) state;
    /*
     * RFC 4648: '=' only at the end, at most two, and only where the last
     * group is short. OpenSSL's EVP_DecodeBlock reads '=' anywhere as zero
     * bits, so the parser must check this itself.
     */
    static const err_case cases[] = {
        {"{" CE ",\"data_base64\":\"====\"}", "data_base64: is not valid base64"},
        {"{" CE ",\"data_base64\":\"a===\"}", "data_base64: is not valid base64"},
        {"{" CE ",\"data_base64\":\"aG=k\"}", "data_base64: is not valid base64"},
        {"{" CE ",\"data_base64\":\"=aGk\"}", "data_base64: is not valid base64"},
        {"{" CE ",\"data_base64\":\"aGk=aGk=\"}", "data_base64: is not valid base64"},
    };
    expect_errors(mt_event_parse_structured, cases, N_CASES(cases));
}

static void test_event_structured_text_data_with_text_content_type(void **state)
{
    (void) state;
    parsed p;
    /* A string with a non-JSON content type is text: its decoded characters. */
    parse_ok(&p, "{" CE ",\"datacontenttype\":\"text/plain\",\"data\":\"line 1\\nline \\\"2\\\" "
                 "caf\\u00e9\"}");
    assert_data_str(&p.ev, MT_DATA_TEXT, "line 1\nline \"2\" caf\xc3\xa9");
    assert_string_equal(p.ev.attr[MT_ATTR_DATACONTENTTYPE], "text/plain");
    parsed_free(&p);

    /* The content type may come after the data. */
    parse_ok(&p, "{" CE ",\"data\":\"<a/>\",\"datacontenttype\":\"application/xml\"}");
    assert_data_str(&p.ev, MT_DATA_TEXT, "<a/>");
    parsed_free(&p);

    /* An empty string is still text. */
    parse_ok(&p, "{" CE ",\"datacontenttype\":\"text/plain\",\"data\":\"\"}");
    assert_data(&p.ev, MT_DATA_TEXT, "", 0);
    parsed_free(&p);

    /* Without a content type, or with a JSON one, a string is JSON text. */
    parse_ok(&p, "{" CE ",\"data\":\"hi\\n\"}");
    assert_data_str(&p.ev, MT_DATA_JSON, "\"hi\\n\"");
    parsed_free(&p);
    parse_ok(&p, "{" CE ",\"datacontenttype\":\"application/json; charset=utf-8\","
                 "\"data\":\"hi\"}");
    assert_data_str(&p.ev, MT_DATA_JSON, "\"hi\"");
    parsed_free(&p);

    /* A non-string with a text content type stays JSON. */
    parse_ok(&p, "{" CE ",\"datacontenttype\":\"text/plain\",\"data\":{\"a\":1}}");
    assert_data_str(&p.ev, MT_DATA_JSON, "{\"a\":1}");
    parsed_free(&p);
}

static void test_event_structured_time_attributes_set_microseconds(void **state)
{
    (void) state;
    parsed p;
    parse_ok(&p, "{" CE ",\"expirytime\":\"1970-01-01T00:00:00Z\","
                 "\"deliverafter\":\"2026-01-02T03:04:05.5Z\",\"time\":\"2026-01-02T03:04:05Z\"}");
    /* An expiry at the epoch is still an expiry (0 would mean none). */
    assert_int_equal(p.ev.expiry_us, 1);
    assert_int_equal(p.ev.deliverafter_us, 1767323045500000LL);
    parsed_free(&p);
}

static void test_event_structured_failed_payload_allocation_is_enomem(void **state)
{
    (void) state;
    const char *json = "{" CE ",\"subject\":\"s\",\"myext\":1,\"data_base64\":\"aGVsbG8h\"}";
    mt_event_batch b;
    mt_event_batch_init(&b);
    char err[256] = "";
    /* The first allocation is the body's string copies, the second the payload. */
    for (long n = 1; n <= 2; n++) {
        mt_mem_fail_after(n);
        mt_err rc = mt_event_parse_structured(json, strlen(json), &b, err, sizeof err);
        mt_mem_fail_after(0);
        assert_int_equal(rc, MT_ENOMEM);
        assert_int_equal(b.count, 0);
    }

    /* In a batch: the copies, then the first event's payload, then the second's. */
    const char *batch = "[{" CE ",\"data_base64\":\"aGk=\"},"
                        "{\"specversion\":\"1.0\",\"id\":\"e2\",\"source\":\"/s\",\"type\":\"t\","
                        "\"data_base64\":\"aGk=\"}]";
    for (long n = 1; n <= 3; n++) {
        mt_mem_fail_after(n);
        mt_err rc = mt_event_parse_batch(batch, strlen(batch), &b, err, sizeof err);
        mt_mem_fail_after(0);
        assert_int_equal(rc, MT_ENOMEM);
    }
    mt_event_batch_free(&b);

    /* The hook is off again: the same body parses. */
    mt_event_batch_init(&b);
    assert_int_equal(mt_event_parse_structured(json, strlen(json), &b, err, sizeof err), MT_OK);
    assert_int_equal(b.count, 1);
    mt_event_batch_free(&b);
}

/* ---- batch mode ---- */

static void test_event_batch_parses_every_event_in_order(void **state)
{
    (void) state;
    const char *json = " [ {\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"/s\",\"type\":\"t\","
                       "\"data\":{\"x\": 1.50}} ,\n"
                       "{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\","
                       "\"subject\":\"s1\",\"priority\":\"3\"},"
                       "{\"specversion\":\"1.0\",\"id\":\"c\",\"source\":\"/s\",\"type\":\"t\","
                       "\"datacontenttype\":\"text/plain\",\"data\":\"txt\"} ]\n";
    mt_event_batch b;
    parse_batch_ok(json, &b, 3);
    mt_event ev;
    batch_event(&b, 0, &ev);
    assert_string_equal(ev.attr[MT_ATTR_ID], "a");
    assert_data_str(&ev, MT_DATA_JSON, "{\"x\": 1.50}");
    batch_event(&b, 1, &ev);
    assert_string_equal(ev.attr[MT_ATTR_ID], "b");
    assert_string_equal(ev.attr[MT_ATTR_SUBJECT], "s1");
    assert_int_equal(ev.priority, 3);
    batch_event(&b, 2, &ev);
    assert_string_equal(ev.attr[MT_ATTR_ID], "c");
    assert_data_str(&ev, MT_DATA_TEXT, "txt");
    mt_event_batch_free(&b);

    /* A batch of one. */
    parse_batch_ok("[{" CE "}]", &b, 1);
    mt_event_batch_free(&b);
}

#define EV_OK "{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"/s\",\"type\":\"t\"}"

static void test_event_batch_errors_name_the_event_index(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"[" EV_OK ",{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\"}]",
         "events[1].type: required attribute is missing"},
        {"[{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\",\"priority\":12}"
         "," EV_OK "]",
         "events[0].priority: 12 is out of range 0-9"},
        {"[" EV_OK "," EV_OK "," EV_OK ",{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/s\","
         "\"type\":\"t\",\"sequence\":1}]",
         "events[3].sequence: is assigned by the engine and cannot be published"},
        {"[" EV_OK ",{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\","
         "\"id\":\"c\"}]",
         "events[1].id: attribute appears twice"},
    };
    expect_errors(mt_event_parse_batch, cases, N_CASES(cases));
    static const err_case prefixed[] = {
        {"[" EV_OK ",{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\","
         "\"data\":{\"n\":9223372036854775808}}]",
         "events[1].data: malformed JSON at byte "},
        {"[" EV_OK ",5]", "events[1]"},
        {"[" EV_OK ",{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\","
         "\"Bad\":1}]",
         "events[1]"},
    };
    expect_error_prefixes(mt_event_parse_batch, prefixed, N_CASES(prefixed));
}

static void test_event_batch_malformed_member_name_names_the_event_index(void **state)
{
    (void) state;
    /* A member name jansson refuses (NUL escape) inside the second event. */
    static const err_case cases[] = {
        {"[" EV_OK ",{\"specversion\":\"1.0\",\"id\":\"b\",\"source\":\"/s\",\"type\":\"t\","
         "\"a\\u0000b\":1}]",
         "an attribute name in events[1]: a NUL character (\\u0000) at byte "},
    };
    expect_error_prefixes(mt_event_parse_batch, cases, N_CASES(cases));
}

static void test_event_batch_refuses_empty_and_non_arrays(void **state)
{
    (void) state;
    static const err_case cases[] = {
        {"[]", "the batch is empty"},
        {" [ \n ] ", "the batch is empty"},
        {EV_OK, "a batch must be a JSON array of events"},
        {"", "a batch must be a JSON array of events"},
        {"  ", "a batch must be a JSON array of events"},
        {"null", "a batch must be a JSON array of events"},
        {"\"[]\"", "a batch must be a JSON array of events"},
        {"[" EV_OK " " EV_OK "]", "malformed JSON at byte 57: expected ',' or ']' after events[0]"},
        {"[" EV_OK, "malformed JSON at byte 56: expected ',' or ']' after events[0]"},
        {"[" EV_OK "]x", "malformed JSON at byte 57: unexpected data after the end"},
        {"[" EV_OK "][]", "malformed JSON at byte 57: unexpected data after the end"},
    };
    expect_errors(mt_event_parse_batch, cases, N_CASES(cases));
    static const err_case prefixed[] = {
        {"[" EV_OK ",]", "events[1]"},
    };
    expect_error_prefixes(mt_event_parse_batch, prefixed, N_CASES(prefixed));
}

/* ---- binary mode ---- */

typedef struct binary_in {
    const char *names[16];
    const char *values[16];
    int n;
} binary_in;

#define REQUIRED_HEADERS                                                  \
    {"specversion", "id", "source", "type"}, {"1.0", "b1", "/bin", "t.b"}, 4

static mt_err parse_binary(const binary_in *in, const char *ct, const char *body, size_t len,
                           mt_event_batch *b, char *err, size_t errlen)
{
    return mt_event_parse_binary(in->names, in->values, in->n, ct, body, len, b, err, errlen);
}

static void binary_ok(const binary_in *in, const char *ct, const char *body, size_t len,
                      parsed *p)
{
    mt_event_batch_init(&p->b);
    char err[256] = "";
    mt_err rc = parse_binary(in, ct, body, len, &p->b, err, sizeof err);
    if (rc) {
        print_error("binary refused: %s: %s\n", mt_err_str(rc), err);
    }
    assert_int_equal(rc, MT_OK);
    assert_int_equal(p->b.count, 1);
    assert_int_equal(mt_event_decode(p->b.buf.data, p->b.len[0], &p->ev), MT_OK);
}

static void binary_error(const binary_in *in, const char *ct, const char *body,
                         const char *want, bool prefix_only)
{
    mt_event_batch b;
    mt_event_batch_init(&b);
    char err[256] = "";
    mt_err rc = parse_binary(in, ct, body, body ? strlen(body) : 0, &b, err, sizeof err);
    bool match = prefix_only ? strncmp(err, want, strlen(want)) == 0 : strcmp(err, want) == 0;
    if (rc != MT_EINVAL || !match) {
        print_error("got %s '%s', want '%s'\n", mt_err_str(rc), err, want);
        fail();
    }
    assert_int_equal(b.count, 0);
    mt_event_batch_free(&b);
}

static void test_event_binary_reads_names_and_values(void **state)
{
    (void) state;
    binary_in in = {{"specversion", "id", "source", "type", "subject", "priority", "time",
                     "correlationid", "region", "replyto"},
                    {"1.0", "b1", "/bin", "t.b", "order 17", "4", "2026-01-02T03:04:05Z", "c-9",
                     "eu", "r.q"},
                    10};
    parsed p;
    binary_ok(&in, NULL, NULL, 0, &p);
    assert_string_equal(p.ev.attr[MT_ATTR_ID], "b1");
    assert_string_equal(p.ev.attr[MT_ATTR_SOURCE], "/bin");
    assert_string_equal(p.ev.attr[MT_ATTR_TYPE], "t.b");
    assert_string_equal(p.ev.attr[MT_ATTR_SUBJECT], "order 17");
    assert_string_equal(p.ev.attr[MT_ATTR_TIME], "2026-01-02T03:04:05Z");
    assert_string_equal(p.ev.attr[MT_ATTR_CORRELATIONID], "c-9");
    assert_string_equal(p.ev.attr[MT_ATTR_REPLYTO], "r.q");
    /* Header extensions are strings. */
    assert_string_equal(p.ev.attr[MT_ATTR_EXTENSIONS], "{\"region\":\"eu\"}");
    assert_int_equal(p.ev.priority, 4);
    assert_null(p.ev.attr[MT_ATTR_DATACONTENTTYPE]);
    assert_data(&p.ev, MT_DATA_NONE, NULL, 0);
    parsed_free(&p);
}

static void test_event_binary_body_kind_follows_content_type(void **state)
{
    (void) state;
    binary_in in = {REQUIRED_HEADERS};
    parsed p;

    const char *json = "{\"a\": 1.10, \"b\": 9223372036854775807}";
    binary_ok(&in, "application/json", json, strlen(json), &p);
    assert_data_str(&p.ev, MT_DATA_JSON, json);
    assert_string_equal(p.ev.attr[MT_ATTR_DATACONTENTTYPE], "application/json");
    parsed_free(&p);

    binary_ok(&in, "application/vnd.x+json; charset=utf-8", "[1]", 3, &p);
    assert_data_str(&p.ev, MT_DATA_JSON, "[1]");
    assert_string_equal(p.ev.attr[MT_ATTR_DATACONTENTTYPE],
                        "application/vnd.x+json; charset=utf-8");
    parsed_free(&p);

    binary_ok(&in, "text/plain; charset=utf-8", "hello\n", 6, &p);
    assert_data_str(&p.ev, MT_DATA_TEXT, "hello\n");
    parsed_free(&p);

    binary_ok(&in, "TEXT/csv", "a,b", 3, &p);
    assert_data_str(&p.ev, MT_DATA_TEXT, "a,b");
    parsed_free(&p);

    static const char bytes[] = {0x00, (char) 0xff, 'x', 0x00};
    binary_ok(&in, "application/octet-stream", bytes, sizeof bytes, &p);
    assert_data(&p.ev, MT_DATA_BINARY, bytes, sizeof bytes);
    parsed_free(&p);

    binary_ok(&in, NULL, bytes, sizeof bytes, &p);
    assert_data(&p.ev, MT_DATA_BINARY, bytes, sizeof bytes);
    assert_null(p.ev.attr[MT_ATTR_DATACONTENTTYPE]);
    parsed_free(&p);

    /* An empty body is no data, whatever the type. */
    binary_ok(&in, "application/json", "", 0, &p);
    assert_data(&p.ev, MT_DATA_NONE, NULL, 0);
    assert_string_equal(p.ev.attr[MT_ATTR_DATACONTENTTYPE], "application/json");
    parsed_free(&p);
}

static void test_event_binary_validates_json_bodies(void **state)
{
    (void) state;
    binary_in in = {REQUIRED_HEADERS};
    binary_error(&in, "application/json", "{\"a\":", "data: malformed JSON at byte ", true);
    binary_error(&in, "application/cloudevents+json", "{} {}", "data: malformed JSON at byte ",
                 true);
    binary_error(&in, "text/json", "{\"b\": 9223372036854775808}",
                 "data: malformed JSON at byte ", true);
    binary_error(&in, "application/json", "\xff", "data: malformed JSON at byte ", true);
    /* Not JSON types are not parsed. */
    parsed p;
    binary_ok(&in, "text/plain", "{\"a\":", 5, &p);
    assert_data_str(&p.ev, MT_DATA_TEXT, "{\"a\":");
    parsed_free(&p);
}

static void test_event_binary_refusals(void **state)
{
    (void) state;
    binary_in missing = {{"specversion", "id", "type"}, {"1.0", "b1", "t"}, 3};
    binary_error(&missing, NULL, NULL, "source: required attribute is missing", false);
    binary_in nospec = {{"id", "source", "type"}, {"b1", "/s", "t"}, 3};
    binary_error(&nospec, NULL, NULL, "specversion: required attribute is missing", false);
    binary_in twice = {{"specversion", "id", "source", "type", "id"},
                       {"1.0", "b1", "/s", "t", "b2"},
                       5};
    binary_error(&twice, NULL, NULL, "id: header appears twice", false);

    static const struct {
        const char *name;
        const char *value;
        const char *err;
    } cases[] = {
        {"datacontenttype", "text/plain",
         "datacontenttype: is not a header attribute in binary mode"},
        {"data", "x", "data: is not a header attribute in binary mode"},
        {"data_base64", "aGk=", "data_base64: is not a header attribute in binary mode"},
        {"sequence", "1", "sequence: is assigned by the engine and cannot be published"},
        {"recordedtime", "2026-01-02T03:04:05Z",
         "recordedtime: is assigned by the engine and cannot be published"},
        {"priority", "10", "priority: must be an integer from 0 to 9"},
        {"time", "now", "time: 'now' is not an RFC 3339 timestamp"},
        {"subject", "\xff\xfe", "subject: header value is not valid UTF-8"},
        {"Region", "eu", "'Region' is not a valid attribute name (a-z, 0-9, at most 20)"},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        binary_in in = {{"specversion", "id", "source", "type", cases[i].name},
                        {"1.0", "b1", "/bin", "t.b", cases[i].value},
                        5};
        binary_error(&in, NULL, NULL, cases[i].err, false);
    }

    binary_in ok = {REQUIRED_HEADERS};
    binary_error(&ok, "text/\xff", "x", "Content-Type: not UTF-8", false);
}

/* ---- content types ---- */

static void test_event_content_type_is_json(void **state)
{
    (void) state;
    static const struct {
        const char *ct;
        bool json;
    } cases[] = {
        {"application/json", true},
        {"application/json; charset=utf-8", true},
        {"application/json;charset=utf-8", true},
        {"application/json ; charset=utf-8", true},
        {"APPLICATION/JSON", true},
        {"application/cloudevents+json", true},
        {"application/cloudevents-batch+json", true},
        {"application/vnd.api+json; v=2", true},
        {"text/json", true},
        {"Text/JSON;x=y", true},
        {"application/xml", false},
        {"application/jsonx", false},
        {"application/json-seq", false},
        {"application/json5", false},
        {"text/plain", false},
        {"text/jsonl", false},
        {"application/octet-stream", false},
        {"json", false},
        {"+json", false},
        {"x+json", false},
        {"", false},
        {NULL, false},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        bool got = mt_event_content_type_is_json(cases[i].ct);
        if (got != cases[i].json) {
            print_error("'%s': got %d\n", cases[i].ct ? cases[i].ct : "(null)", got);
            fail();
        }
    }
}

/* ---- JSON output ---- */

static char *to_json(const mt_event *ev)
{
    mt_buf out;
    mt_buf_init(&out);
    mt_buf_adds(&out, "<"); /* appends, does not overwrite */
    mt_event_to_json(ev, &out);
    char *s = strdup(mt_buf_cstr(&out));
    mt_buf_free(&out);
    assert_int_equal(s[0], '<');
    memmove(s, s + 1, strlen(s));
    return s;
}

#define JSON_ATTRS                                                                      \
    "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/src\",\"type\":\"order.created\"," \
    "\"subject\":\"order-17\",\"time\":\"2026-01-02T03:04:05Z\","                         \
    "\"datacontenttype\":\"application/json\","                                            \
    "\"dataschema\":\"https://example.com/order.json\",\"dataversion\":\"2\","             \
    "\"correlationid\":\"corr-1\",\"causationid\":\"cause-1\","                            \
    "\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\","         \
    "\"expirytime\":\"2026-01-03T00:00:00Z\",\"deliverafter\":\"2026-01-02T04:00:00Z\","   \
    "\"replyto\":\"order.replies\",\"priority\":7,\"region\":\"eu\",\"sequence\":\"42\","  \
    "\"streamversion\":3,\"recordedtime\":\"2026-01-02T03:04:05.123456Z\""

static void test_event_to_json_splices_json_data_verbatim(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);
    char *s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS ",\"data\":{\"a\": 1.10}}");
    free(s);

    static const char big[] = "{\"b\": 9223372036854775807, \"c\" : [ -0, 1e+2 ]}";
    ev.data = (const uint8_t *) big;
    ev.data_len = sizeof big - 1;
    s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS
                        ",\"data\":{\"b\": 9223372036854775807, \"c\" : [ -0, 1e+2 ]}}");
    free(s);
}

static void test_event_to_json_data_kinds(void **state)
{
    (void) state;
    mt_event ev;
    full_event(&ev);

    ev.data_kind = MT_DATA_NONE;
    ev.data = NULL;
    ev.data_len = 0;
    char *s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS "}");
    free(s);

    ev.data_kind = MT_DATA_TEXT;
    ev.data = (const uint8_t *) "line \"1\"\ncaf\xc3\xa9";
    ev.data_len = strlen((const char *) ev.data);
    s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS ",\"data\":\"line \\\"1\\\"\\ncaf\xc3\xa9\"}");
    free(s);

    static const uint8_t bytes[] = {0x00, 0xff, 0xfe, 'h', 'i'};
    ev.data_kind = MT_DATA_BINARY;
    ev.data = bytes;
    ev.data_len = sizeof bytes;
    s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS ",\"data_base64\":\"AP/+aGk=\"}");
    free(s);

    ev.data_len = 0;
    s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS ",\"data_base64\":\"\"}");
    free(s);

    /* Text that is not UTF-8 can only travel as base64. */
    ev.data_kind = MT_DATA_TEXT;
    ev.data = (const uint8_t *) "\xff\xfe";
    ev.data_len = 2;
    s = to_json(&ev);
    assert_string_equal(s, JSON_ATTRS ",\"data_base64\":\"//4=\"}");
    free(s);
}

/* Attribute values that need escaping go through jansson; those that are not UTF-8 are left out. */
static void test_event_to_json_escapes_attributes(void **state)
{
    (void) state;
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "a\"b\\c\x01\x7f";
    ev.attr[MT_ATTR_SOURCE] = "/caf\xc3\xa9";
    ev.attr[MT_ATTR_TYPE] = "t";
    ev.attr[MT_ATTR_SUBJECT] = "\xff\xfe"; /* not UTF-8 */
    ev.attr[MT_ATTR_EXTENSIONS] = "{\"n\":12,\"o\":{\"k\":[true,null]},\"q\":\"x\\\"y\"}";
    ev.sequence = 3;
    ev.streamversion = 1;
    char *s = to_json(&ev);
    assert_string_equal(s, "{\"specversion\":\"1.0\",\"id\":\"a\\\"b\\\\c\\u0001\x7f\","
                           "\"source\":\"/caf\xc3\xa9\",\"type\":\"t\","
                           "\"n\":12,\"o\":{\"k\":[true,null]},\"q\":\"x\\\"y\","
                           "\"sequence\":\"3\",\"streamversion\":1,"
                           "\"recordedtime\":\"1970-01-01T00:00:00.000000Z\"}");
    json_t *o = json_loads(s, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "a\"b\\c\x01\x7f");
    json_decref(o);
    free(s);
}

static void test_event_to_json_engine_attributes(void **state)
{
    (void) state;
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "e1";
    ev.attr[MT_ATTR_SOURCE] = "/s";
    ev.attr[MT_ATTR_TYPE] = "t";
    ev.sequence = 18446744073709551615ULL;
    ev.streamversion = 5; /* without a subject it is not shown */
    ev.recordedtime_us = 0;
    char *s = to_json(&ev);
    assert_string_equal(s, "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\","
                           "\"type\":\"t\","
                           "\"sequence\":\"18446744073709551615\","
                           "\"recordedtime\":\"1970-01-01T00:00:00.000000Z\"}");
    free(s);

    ev.attr[MT_ATTR_SUBJECT] = "s1";
    ev.sequence = 1;
    ev.streamversion = 0;
    ev.priority = 0;
    s = to_json(&ev);
    assert_string_equal(s, "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\","
                           "\"type\":\"t\","
                           "\"subject\":\"s1\",\"priority\":0,\"sequence\":\"1\","
                           "\"streamversion\":0,"
                           "\"recordedtime\":\"1970-01-01T00:00:00.000000Z\"}");
    free(s);
}

static void test_event_to_json_extensions_cannot_replace_attributes(void **state)
{
    (void) state;
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "e1";
    ev.attr[MT_ATTR_SOURCE] = "/s";
    ev.attr[MT_ATTR_TYPE] = "t";
    ev.attr[MT_ATTR_EXTENSIONS] = "{\"id\":\"evil\",\"n\":3,\"ok\":false}";
    ev.sequence = 2;
    char *s = to_json(&ev);
    assert_string_equal(s, "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\","
                           "\"type\":\"t\","
                           "\"n\":3,\"ok\":false,\"sequence\":\"2\","
                           "\"recordedtime\":\"1970-01-01T00:00:00.000000Z\"}");
    free(s);
}

/*
 * The walk copies plain strings itself and hands everything else to jansson,
 * so it must refuse at least what jansson refuses. Bodies are mutated at
 * random (a fixed seed, so every run tries the same ones): a byte replaced,
 * dropped or repeated. Whenever jansson rejects the mutated body as JSON,
 * the parse must be MT_EINVAL; under the sanitizer build this also looks for
 * reads and writes out of bounds.
 */
static void test_event_parse_refuses_what_jansson_refuses(void **state)
{
    (void) state;
    static const char *const bodies[] = {
        "{\"specversion\":\"1.0\",\"id\":\"e-1\",\"source\":\"/s\",\"type\":\"a.b\","
        "\"subject\":\"caf\\u00e9\",\"myext\":true,\"data\":{\"n\":[1,2.5,\"x\\\"y\"],\"m\":null}}",
        "[{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"priority\":3},"
        "{\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"/s\",\"type\":\"t\","
        "\"datacontenttype\":\"text/plain\",\"data\":\"hi\"},"
        "{\"specversion\":\"1.0\",\"id\":\"3\",\"source\":\"/s\",\"type\":\"t\","
        "\"data_base64\":\"aGk=\"}]",
    };
    static const char repl[] = "\"\\{}[],: \x01\x7f\xc3u0a9";
    uint64_t seed = 0x9e3779b97f4a7c15u;
    int refused_by_both = 0;
    for (size_t bi = 0; bi < N_CASES(bodies); bi++) {
        size_t n = strlen(bodies[bi]);
        char *m = malloc(n + 2);
        assert_non_null(m);
        for (int round = 0; round < 4000; round++) {
            memcpy(m, bodies[bi], n + 1);
            size_t len = n;
            for (int k = 0; k < 1 + round % 3; k++) {
                seed = seed * 6364136223846793005u + 1442695040888963407u;
                size_t at = (size_t) (seed >> 33) % len;
                int op = (int) ((seed >> 20) % 3);
                if (op == 0) {
                    m[at] = repl[(seed >> 8) % (sizeof repl - 1)];
                } else if (op == 1 && len > 1) {
                    memmove(m + at, m + at + 1, len - at);
                    len--;
                } else {
                    memmove(m + at + 1, m + at, len - at + 1);
                    len++;
                    if (len > n) { /* keep within the buffer */
                        len = n;
                        m[len] = '\0';
                    }
                }
            }
            mt_event_batch b;
            mt_event_batch_init(&b);
            char err[512];
            mt_err rc = m[0] == '[' ? mt_event_parse_batch(m, len, &b, err, sizeof err)
                                    : mt_event_parse_structured(m, len, &b, err, sizeof err);
            json_error_t je;
            json_t *j = json_loadb(m, len, 0, &je);
            if (!j) {
                if (rc != MT_EINVAL) {
                    fail_msg("jansson refuses (%s) but the parse gave %s: %.*s", je.text,
                             mt_err_str(rc), (int) len, m);
                }
                refused_by_both++;
            }
            json_decref(j);
            mt_event_batch_free(&b);
        }
        free(m);
    }
    assert_true(refused_by_both > 1000); /* the mutations did break the JSON */
}

static void test_event_parse_then_to_json_returns_what_was_sent(void **state)
{
    (void) state;
    const char *in = "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/orders\","
                     "\"type\":\"order.created\",\"subject\":\"o-1\",\"priority\":\"2\","
                     "\"tries\":3,\"urgent\":true,\"data\":{\"a\": 1.10, \"b\": "
                     "9223372036854775807}}";
    parsed p;
    parse_ok(&p, in);
    mt_event_record_set_position(p.b.buf.data, 9, 4, 1767323045000001LL);
    assert_int_equal(mt_event_decode(p.b.buf.data, p.b.len[0], &p.ev), MT_OK);
    char *s = to_json(&p.ev);
    assert_string_equal(s, "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/orders\","
                           "\"type\":\"order.created\",\"subject\":\"o-1\",\"priority\":2,"
                           "\"tries\":3,\"urgent\":true,\"sequence\":\"9\",\"streamversion\":4,"
                           "\"recordedtime\":\"2026-01-02T03:04:05.000001Z\","
                           "\"data\":{\"a\": 1.10, \"b\": 9223372036854775807}}");
    free(s);
    parsed_free(&p);

    /* data_base64 in, data_base64 out. */
    parse_ok(&p, "{" CE ",\"data_base64\":\"AP/+aGk=\"}");
    s = to_json(&p.ev);
    assert_non_null(strstr(s, ",\"data_base64\":\"AP/+aGk=\"}"));
    free(s);
    parsed_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_attr_names_are_the_cloudevents_names),
        cmocka_unit_test(test_event_init_marks_everything_absent),
        cmocka_unit_test(test_event_record_round_trips_every_attribute),
        cmocka_unit_test(test_event_rebase_points_into_a_copy),
        cmocka_unit_test(test_event_record_layout_matches_the_header),
        cmocka_unit_test(test_event_record_priority_absent_differs_from_zero),
        cmocka_unit_test(test_event_record_keeps_every_data_kind),
        cmocka_unit_test(test_event_decode_refuses_corrupt_records),
        cmocka_unit_test(test_event_decode_takes_the_rest_as_data),
        cmocka_unit_test(test_event_record_set_position_patches_in_place),
        cmocka_unit_test(test_event_record_subject_reads_only_the_subject),
        cmocka_unit_test(test_event_batch_add_appends_records_back_to_back),
        cmocka_unit_test(test_event_structured_minimal_event),
        cmocka_unit_test(test_event_structured_reads_every_attribute),
        cmocka_unit_test(test_event_structured_priority_forms),
        cmocka_unit_test(test_event_structured_missing_required_attribute_is_named),
        cmocka_unit_test(test_event_structured_wrong_types_and_values_are_named),
        cmocka_unit_test(test_event_structured_type_must_be_a_dotted_name),
        cmocka_unit_test(test_event_structured_length_limits_per_attribute),
        cmocka_unit_test(test_event_structured_null_attributes_are_absent),
        cmocka_unit_test(test_event_structured_refuses_engine_attributes),
        cmocka_unit_test(test_event_structured_keeps_extension_attributes),
        cmocka_unit_test(test_event_structured_refuses_bad_extensions),
        cmocka_unit_test(test_event_structured_extensions_are_bounded_in_total),
        cmocka_unit_test(test_event_structured_refuses_duplicate_attributes),
        cmocka_unit_test(test_event_structured_plain_and_escaped_strings_read_alike),
        cmocka_unit_test(test_event_structured_duplicates_among_many_members),
        cmocka_unit_test(test_event_structured_keeps_json_data_as_exact_text),
        cmocka_unit_test(test_event_structured_refuses_integers_beyond_int64),
        cmocka_unit_test(test_event_structured_refuses_malformed_json),
        cmocka_unit_test(test_event_structured_refuses_data_and_data_base64_together),
        cmocka_unit_test(test_event_structured_decodes_data_base64),
        cmocka_unit_test(test_event_structured_refuses_unpadded_or_bad_length_base64),
        cmocka_unit_test(test_event_structured_refuses_misplaced_base64_padding),
        cmocka_unit_test(test_event_structured_text_data_with_text_content_type),
        cmocka_unit_test(test_event_structured_time_attributes_set_microseconds),
        cmocka_unit_test(test_event_structured_failed_payload_allocation_is_enomem),
        cmocka_unit_test(test_event_batch_parses_every_event_in_order),
        cmocka_unit_test(test_event_batch_errors_name_the_event_index),
        cmocka_unit_test(test_event_batch_malformed_member_name_names_the_event_index),
        cmocka_unit_test(test_event_batch_refuses_empty_and_non_arrays),
        cmocka_unit_test(test_event_binary_reads_names_and_values),
        cmocka_unit_test(test_event_binary_body_kind_follows_content_type),
        cmocka_unit_test(test_event_binary_validates_json_bodies),
        cmocka_unit_test(test_event_binary_refusals),
        cmocka_unit_test(test_event_content_type_is_json),
        cmocka_unit_test(test_event_to_json_splices_json_data_verbatim),
        cmocka_unit_test(test_event_to_json_data_kinds),
        cmocka_unit_test(test_event_to_json_escapes_attributes),
        cmocka_unit_test(test_event_to_json_engine_attributes),
        cmocka_unit_test(test_event_to_json_extensions_cannot_replace_attributes),
        cmocka_unit_test(test_event_parse_then_to_json_returns_what_was_sent),
        cmocka_unit_test(test_event_parse_refuses_what_jansson_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

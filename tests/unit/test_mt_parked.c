/*
 * test_mt_parked.c - parked message records: the binary layout round-trips
 * every field (the longest lane, large numbers, errors), records of the
 * earlier JSON layout are read (whole, or only their state and attempts),
 * damaged records are refused, the error list keeps only the last attempts,
 * and lease tokens have their fixed form.
 */
#include "mt_test.h"
#include <jansson.h>
#include "mt_parked.h"

static mt_parked round_trip(const mt_parked *in, size_t *len)
{
    mt_buf b;
    mt_buf_init(&b);
    mt_buf_adds(&b, "x"); /* encode appends */
    mt_parked_encode(in, &b);
    assert_int_equal(b.data[0], 'x');
    mt_parked out;
    assert_int_equal(mt_parked_decode(b.data + 1, b.len - 1, &out), MT_OK);
    *len = b.len - 1;
    mt_buf_free(&b);
    return out;
}

static void test_parked_round_trips_every_field(void **state)
{
    (void) state;
    mt_parked p;
    mt_parked_init(&p);
    assert_int_equal(p.state, MT_PARK_NONE);
    p.state = MT_PARK_LEASED;
    p.attempts = 4000000000u;
    p.due_us = 1798761600123456LL;
    p.lease = 0xfedcba9876543210ULL;
    memset(p.lane, 's', MT_LANE_MAX);
    p.lane[MT_LANE_MAX] = '\0';
    p.errors = strdup("[{\"attempt\":1,\"error\":\"boom\"}]");
    size_t len;
    mt_parked q = round_trip(&p, &len);
    assert_int_equal(len, 24 + MT_LANE_MAX + strlen(p.errors));
    assert_int_equal(q.state, MT_PARK_LEASED);
    assert_int_equal(q.attempts, 4000000000u);
    assert_int_equal(q.due_us, 1798761600123456LL);
    assert_true(q.lease == 0xfedcba9876543210ULL);
    assert_string_equal(q.lane, p.lane);
    assert_string_equal(q.errors, p.errors);
    assert_false(q.redriven);
    mt_parked_free(&q);
    p.redriven = true; /* kept in the state byte's top bit */
    q = round_trip(&p, &len);
    assert_true(q.redriven);
    assert_int_equal(q.state, MT_PARK_LEASED);
    mt_parked_free(&q);
    /* The state and attempts alone, the redriven bit aside. */
    mt_buf b;
    mt_buf_init(&b);
    mt_parked_encode(&p, &b);
    mt_park_state st;
    uint32_t attempts;
    assert_int_equal(mt_parked_peek(b.data, b.len, &st, &attempts), MT_OK);
    assert_int_equal(st, MT_PARK_LEASED);
    assert_int_equal(attempts, 4000000000u);
    assert_int_equal(mt_parked_peek(b.data, 23, &st, &attempts), MT_EIO);
    mt_buf_free(&b);
    mt_parked_free(&p);

    /* The strict lane is empty; no errors is no errors. */
    mt_parked_init(&p);
    p.state = MT_PARK_BLOCKED;
    q = round_trip(&p, &len);
    assert_int_equal(len, 24);
    assert_int_equal(q.state, MT_PARK_BLOCKED);
    assert_string_equal(q.lane, "");
    assert_null(q.errors);
    json_t *a = mt_parked_errors(&q);
    assert_true(json_is_array(a) && json_array_size(a) == 0);
    json_decref(a);
    mt_parked_free(&q);
}

static void test_parked_reads_records_of_the_json_layout(void **state)
{
    (void) state;
    static const char old[] =
        "{\"state\":\"leased\",\"attempts\":3,\"lane\":\"p7:s:order-1\","
        "\"lease\":\"42-00000000000000ff\",\"due\":1798761600000000,"
        "\"errors\":[{\"attempt\":1,\"error\":\"a\"},{\"attempt\":2,\"error\":\"b\"}]}";
    mt_parked p;
    assert_int_equal(mt_parked_decode(old, strlen(old), &p), MT_OK);
    assert_int_equal(p.state, MT_PARK_LEASED);
    assert_int_equal(p.attempts, 3);
    assert_string_equal(p.lane, "p7:s:order-1");
    assert_true(p.lease == 0xff);
    assert_int_equal(p.due_us, 1798761600000000LL);
    json_t *a = mt_parked_errors(&p);
    assert_int_equal(json_array_size(a), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(a, 1), "error")), "b");
    json_decref(a);
    mt_parked_free(&p);

    static const char blocked[] = "{\"state\":\"blocked\",\"attempts\":0,\"lane\":\"\"}";
    assert_int_equal(mt_parked_decode(blocked, strlen(blocked), &p), MT_OK);
    assert_int_equal(p.state, MT_PARK_BLOCKED);
    assert_null(p.errors);
    mt_parked_free(&p);

    static const char retry[] = "{\"state\":\"retry\",\"attempts\":1,\"due\":5}";
    assert_int_equal(mt_parked_decode(retry, strlen(retry), &p), MT_OK);
    assert_int_equal(p.state, MT_PARK_RETRY);
    assert_int_equal(p.due_us, 5);
    mt_parked_free(&p);
    mt_park_state st;
    uint32_t attempts;
    assert_int_equal(mt_parked_peek(retry, strlen(retry), &st, &attempts), MT_OK);
    assert_int_equal(st, MT_PARK_RETRY);
    assert_int_equal(attempts, 1);
    assert_int_equal(mt_parked_peek("{\"a\":", 5, &st, &attempts), MT_EIO);
}

static void test_parked_refuses_damaged_records(void **state)
{
    (void) state;
    mt_parked p;
    mt_parked_init(&p);
    p.state = MT_PARK_RETRY;
    snprintf(p.lane, sizeof p.lane, "s:abc");
    mt_buf b;
    mt_buf_init(&b);
    mt_parked_encode(&p, &b);
    mt_parked q;
    /* Too short, an unknown format, an unknown state, a lane longer than the record. */
    assert_int_equal(mt_parked_decode(b.data, 23, &q), MT_EIO);
    mt_parked_free(&q);
    assert_int_equal(mt_parked_decode(b.data, 0, &q), MT_EIO);
    b.data[0] = 2;
    assert_int_equal(mt_parked_decode(b.data, b.len, &q), MT_EIO);
    b.data[0] = 1;
    b.data[1] = 9;
    assert_int_equal(mt_parked_decode(b.data, b.len, &q), MT_EIO);
    b.data[1] = MT_PARK_RETRY;
    b.data[23] = 6;
    assert_int_equal(mt_parked_decode(b.data, b.len, &q), MT_EIO);
    b.data[23] = 5;
    assert_int_equal(mt_parked_decode(b.data, b.len, &q), MT_OK);
    assert_string_equal(q.lane, "s:abc");
    mt_parked_free(&q);
    /* JSON that is not an object. */
    assert_int_equal(mt_parked_decode("{\"a\":", 5, &q), MT_EIO);
    mt_buf_free(&b);
}

static void test_parked_keeps_the_last_errors(void **state)
{
    (void) state;
    mt_parked p;
    mt_parked_init(&p);
    for (int i = 1; i <= 5; i++) {
        mt_parked_add_error(&p, json_pack("{si}", "attempt", i), 3);
    }
    json_t *a = mt_parked_errors(&p);
    assert_int_equal(json_array_size(a), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(a, 0), "attempt")), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(a, 2), "attempt")), 5);
    json_decref(a);
    mt_parked_free(&p);
}

static void test_parked_token_form(void **state)
{
    (void) state;
    char tok[64];
    mt_parked_token(18446744073709551615ULL, 0xabc, tok, sizeof tok);
    assert_string_equal(tok, "18446744073709551615-0000000000000abc");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parked_round_trips_every_field),
        cmocka_unit_test(test_parked_reads_records_of_the_json_layout),
        cmocka_unit_test(test_parked_refuses_damaged_records),
        cmocka_unit_test(test_parked_keeps_the_last_errors),
        cmocka_unit_test(test_parked_token_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_mt_filter.c - content filters, as specified in mt_filter.h.
 */
#include <pthread.h>
#include "mt_test.h"
#include "mt_filter.h"
#include "mt_mem.h"

static const char order_data[] =
    "{\"currency\":\"EUR\",\"count\":3,\"price\":9.99,\"whole\":3.0,\"half\":2.50,"
    "\"thousand\":1e3,\"big\":1e22,\"tiny\":1e-7,\"neg\":-12,\"ok\":true,\"off\":false,"
    "\"none\":null,\"empty\":\"\",\"nul\":\"a\\u0000b\","
    "\"customer\":{\"tier\":\"gold\",\"address\":{\"city\":\"Lyon\"}},"
    "\"items\":[{\"sku\":\"A-1\"},{\"sku\":\"B-2\"}],\"tags\":[\"x\",\"y\"],"
    "\"dotted.key\":\"unreachable\"}";

/* An order event with most attributes, three extensions and JSON data. */
static void order_event(mt_event *ev)
{
    mt_event_init(ev);
    ev->attr[MT_ATTR_ID] = "e-1";
    ev->attr[MT_ATTR_SOURCE] = "/shop/eu";
    ev->attr[MT_ATTR_TYPE] = "order.created";
    ev->attr[MT_ATTR_SUBJECT] = "order-42";
    ev->attr[MT_ATTR_TIME] = "2026-01-02T03:04:05Z";
    ev->attr[MT_ATTR_DATACONTENTTYPE] = "application/json";
    ev->attr[MT_ATTR_CORRELATIONID] = "c-9";
    ev->attr[MT_ATTR_EXTENSIONS] = "{\"tenant\":\"acme\",\"retries\":3,\"beta\":true}";
    ev->priority = 7;
    ev->sequence = 5;
    ev->data_kind = MT_DATA_JSON;
    ev->data = (const uint8_t *) order_data;
    ev->data_len = sizeof order_data - 1;
}

static mt_filter *compile_text(const char *text)
{
    json_error_t je;
    json_t *spec = json_loads(text, JSON_ALLOW_NUL, &je);
    if (!spec) {
        print_error("bad test JSON %s: %s\n", text, je.text);
    }
    assert_non_null(spec);
    mt_filter *f = NULL;
    char err[256];
    mt_err rc = mt_filter_compile(spec, &f, err, sizeof err);
    if (rc) {
        print_error("%s: %s\n", text, err);
    }
    assert_int_equal(rc, MT_OK);
    assert_non_null(f);
    json_decref(spec);
    return f;
}

static void expect_eval(const char *text, const mt_event *ev, bool want)
{
    mt_filter *f = compile_text(text);
    bool m = !want;
    assert_int_equal(mt_filter_eval(f, ev, &m), MT_OK);
    if (m != want) {
        print_error("filter %s: match %d, want %d\n", text, (int) m, (int) want);
    }
    assert_int_equal(m, want);
    mt_filter_free(f);
}

typedef struct eval_case {
    const char *filter;
    bool match;
} eval_case;

static void run_cases(const eval_case *c, size_t n, const mt_event *ev)
{
    for (size_t i = 0; i < n; i++) {
        expect_eval(c[i].filter, ev, c[i].match);
    }
}

#define RUN(cases, ev) run_cases(cases, sizeof cases / sizeof cases[0], ev)

static void expect_compile_error(const char *text, const char *want)
{
    json_t *spec = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    if (text) {
        assert_non_null(spec);
    }
    mt_filter *f = (mt_filter *) &f; /* must be reset to NULL */
    char err[256];
    mt_err rc = mt_filter_compile(spec, &f, err, sizeof err);
    assert_int_equal(rc, MT_EINVAL);
    assert_null(f);
    if (strcmp(err, want) != 0) {
        print_error("filter %s\n  got:  %s\n  want: %s\n", text ? text : "(null)", err, want);
    }
    assert_string_equal(err, want);
    json_decref(spec);
}

/* ---- dialects ---- */

static void test_filter_exact_compares_whole_value_case_sensitively(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"exact\": {\"type\": \"order.created\"}}", true},
        {"{\"exact\": {\"type\": \"order\"}}", false},
        {"{\"exact\": {\"type\": \"order.created.x\"}}", false},
        {"{\"exact\": {\"type\": \"Order.Created\"}}", false},
        {"{\"exact\": {\"subject\": \"order-42\"}}", true},
        {"{\"exact\": {\"id\": \"e-1\"}}", true},
        {"{\"exact\": {\"source\": \"/shop/eu\"}}", true},
        {"{\"exact\": {\"time\": \"2026-01-02T03:04:05Z\"}}", true},
        {"{\"exact\": {\"datacontenttype\": \"application/json\"}}", true},
        {"{\"exact\": {\"correlationid\": \"c-9\"}}", true},
        {"{\"exact\": {\"specversion\": \"1.0\"}}", true},
        {"{\"exact\": {\"priority\": \"7\"}}", true},
        {"{\"exact\": {\"priority\": \"07\"}}", false},
        {"{\"exact\": {\"subject\": \"\"}}", false},
    };
    RUN(cases, &ev);
}

static void test_filter_prefix_and_suffix(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"prefix\": {\"subject\": \"order-\"}}", true},
        {"{\"prefix\": {\"subject\": \"order-42\"}}", true},
        {"{\"prefix\": {\"subject\": \"order-421\"}}", false},
        {"{\"prefix\": {\"subject\": \"rder\"}}", false},
        {"{\"prefix\": {\"subject\": \"\"}}", true},
        {"{\"prefix\": {\"source\": \"/shop/\"}}", true},
        {"{\"suffix\": {\"type\": \".created\"}}", true},
        {"{\"suffix\": {\"type\": \"order.created\"}}", true},
        {"{\"suffix\": {\"type\": \"xorder.created\"}}", false},
        {"{\"suffix\": {\"type\": \".create\"}}", false},
        {"{\"suffix\": {\"type\": \"\"}}", true},
        {"{\"suffix\": {\"source\": \"/eu\"}}", true},
    };
    RUN(cases, &ev);
}

static void test_filter_several_pairs_must_all_hold(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"exact\": {\"type\": \"order.created\", \"subject\": \"order-42\"}}", true},
        {"{\"exact\": {\"type\": \"order.created\", \"subject\": \"order-43\"}}", false},
        {"{\"exact\": {\"type\": \"order.x\", \"subject\": \"order-42\"}}", false},
        {"{\"prefix\": {\"type\": \"order.\", \"data.currency\": \"EU\"}}", true},
    };
    RUN(cases, &ev);
}

static void test_filter_all_any_not_and_nesting(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        /* the example of the brief and header */
        {"{\"all\": [{\"exact\": {\"data.currency\": \"EUR\"}},"
         "           {\"prefix\": {\"subject\": \"order-\"}}]}", true},
        {"{\"all\": [{\"exact\": {\"data.currency\": \"EUR\"}},"
         "           {\"prefix\": {\"subject\": \"order-\"}},"
         "           {\"not\": {\"suffix\": {\"type\": \".test\"}}}]}", true},
        {"{\"all\": [{\"exact\": {\"data.currency\": \"USD\"}},"
         "           {\"prefix\": {\"subject\": \"order-\"}}]}", false},
        {"{\"all\": [{\"exact\": {\"type\": \"order.created\"}}]}", true},
        {"{\"any\": [{\"exact\": {\"data.currency\": \"USD\"}},"
         "           {\"exact\": {\"data.currency\": \"EUR\"}}]}", true},
        {"{\"any\": [{\"exact\": {\"data.currency\": \"USD\"}},"
         "           {\"exact\": {\"data.currency\": \"GBP\"}}]}", false},
        {"{\"not\": {\"exact\": {\"type\": \"order.created\"}}}", false},
        {"{\"not\": {\"exact\": {\"type\": \"order.cancelled\"}}}", true},
        {"{\"not\": {\"not\": {\"exact\": {\"type\": \"order.created\"}}}}", true},
        {"{\"any\": [{\"all\": [{\"exact\": {\"type\": \"x\"}}, {\"exact\": {\"id\": \"e-1\"}}]},"
         "           {\"all\": [{\"not\": {\"prefix\": {\"source\": \"/crm\"}}},"
         "                      {\"any\": [{\"exact\": {\"data.customer.tier\": \"gold\"}},"
         "                                 {\"exact\": {\"data.customer.tier\": \"silver\"}}]}]}]}",
         true},
        {"{\"all\": [{\"any\": [{\"exact\": {\"type\": \"x\"}}, {\"exact\": {\"type\": \"y\"}}]},"
         "           {\"exact\": {\"id\": \"e-1\"}}]}", false},
    };
    RUN(cases, &ev);
}

static void test_filter_depth_limit_counts_levels(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    /* MT_FILTER_MAX_DEPTH levels are fine: MT_FILTER_MAX_DEPTH - 1 nots around an exact. */
    char text[1024] = "";
    char want[1024] = "";
    for (int i = 0; i < MT_FILTER_MAX_DEPTH - 1; i++) {
        strcat(text, "{\"not\": ");
    }
    strcat(text, "{\"exact\": {\"type\": \"order.created\"}}");
    for (int i = 0; i < MT_FILTER_MAX_DEPTH - 1; i++) {
        strcat(text, "}");
    }
    expect_eval(text, &ev, (MT_FILTER_MAX_DEPTH - 1) % 2 == 0);

    /* One more level is refused, at the path of the offending expression. */
    char deeper[1100] = "{\"not\": ";
    strcat(deeper, text);
    strcat(deeper, "}");
    for (int i = 0; i < MT_FILTER_MAX_DEPTH; i++) {
        strcat(want, i ? ".not" : "not");
    }
    snprintf(want + strlen(want), sizeof want - strlen(want),
             ": filters nested more than %d deep", MT_FILTER_MAX_DEPTH);
    expect_compile_error(deeper, want);
}

/* ---- attributes ---- */

static void test_filter_missing_attributes_never_match(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"exact\": {\"dataschema\": \"x\"}}", false},
        {"{\"prefix\": {\"dataschema\": \"\"}}", false},
        {"{\"suffix\": {\"causationid\": \"\"}}", false},
        {"{\"exact\": {\"nosuchext\": \"x\"}}", false},
        {"{\"prefix\": {\"nosuchext\": \"\"}}", false},
        /* under not, an absent attribute always matches */
        {"{\"not\": {\"exact\": {\"dataschema\": \"x\"}}}", true},
        {"{\"not\": {\"prefix\": {\"replyto\": \"\"}}}", true},
        {"{\"all\": [{\"exact\": {\"type\": \"order.created\"}},"
         "           {\"exact\": {\"traceparent\": \"x\"}}]}", false},
    };
    RUN(cases, &ev);

    /* No priority, no extensions at all. */
    mt_event bare;
    mt_event_init(&bare);
    bare.attr[MT_ATTR_TYPE] = "t";
    expect_eval("{\"prefix\": {\"priority\": \"\"}}", &bare, false);
    expect_eval("{\"exact\": {\"tenant\": \"acme\"}}", &bare, false);
    expect_eval("{\"exact\": {\"data.a\": \"1\"}}", &bare, false);
    expect_eval("{\"not\": {\"exact\": {\"tenant\": \"acme\"}}}", &bare, true);
    expect_eval("{\"exact\": {\"type\": \"t\"}}", &bare, true);
}

static void test_filter_extension_attributes(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"exact\": {\"tenant\": \"acme\"}}", true},
        {"{\"exact\": {\"tenant\": \"acm\"}}", false},
        {"{\"prefix\": {\"tenant\": \"ac\"}}", true},
        {"{\"exact\": {\"retries\": \"3\"}}", true},
        {"{\"exact\": {\"beta\": \"true\"}}", true},
        {"{\"exact\": {\"beta\": \"True\"}}", false},
        {"{\"all\": [{\"exact\": {\"tenant\": \"acme\"}}, {\"exact\": {\"retries\": \"3\"}},"
         "           {\"exact\": {\"beta\": \"true\"}}]}", true},
    };
    RUN(cases, &ev);

    /* A broken extension object (a corrupt record) is a non-match, not a crash. */
    ev.attr[MT_ATTR_EXTENSIONS] = "{\"tenant\":";
    expect_eval("{\"exact\": {\"tenant\": \"acme\"}}", &ev, false);
    ev.attr[MT_ATTR_EXTENSIONS] = "[\"tenant\"]";
    expect_eval("{\"exact\": {\"tenant\": \"acme\"}}", &ev, false);
}

/* ---- data ---- */

static void test_filter_data_paths_reach_nested_values(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"exact\": {\"data.currency\": \"EUR\"}}", true},
        {"{\"exact\": {\"data.customer.tier\": \"gold\"}}", true},
        {"{\"exact\": {\"data.customer.address.city\": \"Lyon\"}}", true},
        {"{\"suffix\": {\"data.customer.address.city\": \"yon\"}}", true},
        {"{\"exact\": {\"data.customer.address.town\": \"Lyon\"}}", false},
        {"{\"exact\": {\"data.customer.tier.x\": \"gold\"}}", false},
        {"{\"exact\": {\"data.items.0.sku\": \"A-1\"}}", true},
        {"{\"exact\": {\"data.items.1.sku\": \"B-2\"}}", true},
        {"{\"exact\": {\"data.items.2.sku\": \"B-2\"}}", false},
        {"{\"exact\": {\"data.items.01.sku\": \"B-2\"}}", false},
        {"{\"exact\": {\"data.items.-1.sku\": \"B-2\"}}", false},
        {"{\"exact\": {\"data.tags.1\": \"y\"}}", true},
        {"{\"exact\": {\"data.items.sku\": \"A-1\"}}", false},
        /* objects, arrays and null have no text */
        {"{\"prefix\": {\"data.customer\": \"\"}}", false},
        {"{\"prefix\": {\"data.items\": \"\"}}", false},
        {"{\"prefix\": {\"data.none\": \"\"}}", false},
        {"{\"exact\": {\"data.none\": \"null\"}}", false},
        {"{\"exact\": {\"data.missing\": \"\"}}", false},
        /* an empty string is a value */
        {"{\"exact\": {\"data.empty\": \"\"}}", true},
        /* a key with a dot cannot be reached */
        {"{\"exact\": {\"data.dotted.key\": \"unreachable\"}}", false},
    };
    RUN(cases, &ev);
}

static void test_filter_numbers_and_booleans_compare_by_json_text(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    static const eval_case cases[] = {
        {"{\"exact\": {\"data.count\": \"3\"}}", true},
        {"{\"exact\": {\"data.count\": \"3.0\"}}", false},
        {"{\"exact\": {\"data.count\": \" 3\"}}", false},
        {"{\"exact\": {\"data.neg\": \"-12\"}}", true},
        {"{\"prefix\": {\"data.neg\": \"-1\"}}", true},
        {"{\"exact\": {\"data.price\": \"9.99\"}}", true},
        {"{\"prefix\": {\"data.price\": \"9.\"}}", true},
        {"{\"exact\": {\"data.whole\": \"3.0\"}}", true},
        {"{\"exact\": {\"data.whole\": \"3\"}}", false},
        {"{\"exact\": {\"data.half\": \"2.5\"}}", true},
        {"{\"exact\": {\"data.half\": \"2.50\"}}", false},
        {"{\"exact\": {\"data.thousand\": \"1000.0\"}}", true},
        {"{\"exact\": {\"data.big\": \"1e+22\"}}", true},
        {"{\"exact\": {\"data.tiny\": \"1e-07\"}}", true},
        {"{\"exact\": {\"data.ok\": \"true\"}}", true},
        {"{\"exact\": {\"data.off\": \"false\"}}", true},
        {"{\"exact\": {\"data.ok\": \"1\"}}", false},
        /* a string "3" matches "3" too: the text is what counts */
        {"{\"exact\": {\"data.items.0.sku\": \"A-1\"}}", true},
    };
    RUN(cases, &ev);
}

static void test_filter_real_text_follows_python_repr(void **state)
{
    (void) state;
    /* Pairs of (JSON number, the text a filter matches), as Python's repr(float(x)). */
    static const char *const reals[][2] = {
        {"0.1", "0.1"},        {"0.0", "0.0"},          {"-0.0", "-0.0"},
        {"1.5", "1.5"},        {"100.0", "100.0"},      {"123456.789", "123456.789"},
        {"0.0001", "0.0001"},  {"0.00001", "1e-05"},    {"1.25e-5", "1.25e-05"},
        {"1e15", "1000000000000000.0"},                 {"1e16", "1e+16"},
        {"1.5e16", "1.5e+16"}, {"1e100", "1e+100"},     {"-2.5e-300", "-2.5e-300"},
        {"0.30000000000000004", "0.30000000000000004"}, {"1.7976931348623157e308",
                                                         "1.7976931348623157e+308"},
        {"5e-324", "5e-324"},  {"123.0e2", "12300.0"},  {"-7.25", "-7.25"},
    };
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        char data[128], filter[128];
        snprintf(data, sizeof data, "{\"x\": %s}", reals[i][0]);
        snprintf(filter, sizeof filter, "{\"exact\": {\"data.x\": \"%s\"}}", reals[i][1]);
        mt_event ev;
        mt_event_init(&ev);
        ev.data_kind = MT_DATA_JSON;
        ev.data = (const uint8_t *) data;
        ev.data_len = strlen(data);
        expect_eval(filter, &ev, true);
    }
}

static void test_filter_data_strings_may_hold_nul(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    expect_eval("{\"exact\": {\"data.nul\": \"a\\u0000b\"}}", &ev, true);
    expect_eval("{\"exact\": {\"data.nul\": \"a\"}}", &ev, false);
    expect_eval("{\"suffix\": {\"data.nul\": \"\\u0000b\"}}", &ev, true);
}

static void test_filter_data_that_is_not_json_never_matches(void **state)
{
    (void) state;
    static const char json_text[] = "{\"currency\":\"EUR\"}";
    static const char broken[] = "{\"currency\": \"EUR\", ";
    static const uint8_t binary[] = {0xff, 0x00, 0x7b, 0x22, 0xfe};
    const char *f_data = "{\"exact\": {\"data.currency\": \"EUR\"}}";
    const char *f_not = "{\"not\": {\"exact\": {\"data.currency\": \"EUR\"}}}";
    const char *f_type = "{\"all\": [{\"exact\": {\"type\": \"t\"}},"
                         "          {\"not\": {\"prefix\": {\"data.currency\": \"\"}}}]}";
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_TYPE] = "t";

    /* JSON-looking bytes sent as text */
    ev.data_kind = MT_DATA_TEXT;
    ev.data = (const uint8_t *) json_text;
    ev.data_len = sizeof json_text - 1;
    expect_eval(f_data, &ev, false);
    expect_eval(f_not, &ev, true);
    expect_eval(f_type, &ev, true);

    /* binary */
    ev.data_kind = MT_DATA_BINARY;
    ev.data = binary;
    ev.data_len = sizeof binary;
    expect_eval(f_data, &ev, false);
    expect_eval(f_type, &ev, true);

    /* marked JSON but malformed (a corrupt record) */
    ev.data_kind = MT_DATA_JSON;
    ev.data = (const uint8_t *) broken;
    ev.data_len = sizeof broken - 1;
    expect_eval(f_data, &ev, false);
    expect_eval(f_type, &ev, true);

    /* JSON cut short by data_len: only data_len bytes count */
    ev.data = (const uint8_t *) json_text;
    ev.data_len = 10;
    expect_eval(f_data, &ev, false);

    /* binary bytes marked JSON */
    ev.data = binary;
    ev.data_len = sizeof binary;
    expect_eval(f_data, &ev, false);

    /* a JSON scalar has no keys */
    ev.data = (const uint8_t *) "\"EUR\"";
    ev.data_len = 5;
    expect_eval(f_data, &ev, false);

    /* no data at all */
    ev.data_kind = MT_DATA_NONE;
    ev.data = NULL;
    ev.data_len = 0;
    expect_eval(f_data, &ev, false);
    expect_eval(f_type, &ev, true);
    ev.data_kind = MT_DATA_JSON;
    expect_eval(f_data, &ev, false);
}

/* ---- parse once ---- */

static long jansson_allocs;

static void *counting_malloc(size_t n)
{
    jansson_allocs++;
    return malloc(n);
}

static long allocs_for(const char *text, const mt_event *ev)
{
    mt_filter *f = compile_text(text);
    bool m;
    jansson_allocs = 0;
    json_set_alloc_funcs(counting_malloc, free);
    assert_int_equal(mt_filter_eval(f, ev, &m), MT_OK);
    json_set_alloc_funcs(malloc, free);
    mt_filter_free(f);
    return jansson_allocs;
}

static void test_filter_parses_data_at_most_once_per_evaluation(void **state)
{
    (void) state;
    mt_event ev;
    order_event(&ev);
    long none = allocs_for("{\"all\": [{\"exact\": {\"type\": \"order.created\"}},"
                           "           {\"prefix\": {\"subject\": \"order-\"}}]}", &ev);
    long one = allocs_for("{\"exact\": {\"data.currency\": \"EUR\"}}", &ev);
    long many = allocs_for(
        "{\"all\": [{\"exact\": {\"data.currency\": \"EUR\", \"data.count\": \"3\"}},"
        "           {\"prefix\": {\"data.customer.tier\": \"go\"}},"
        "           {\"not\": {\"suffix\": {\"data.items.0.sku\": \"X\"}}},"
        "           {\"any\": [{\"exact\": {\"data.price\": \"1\"}},"
        "                      {\"exact\": {\"data.price\": \"9.99\"}}]}]}",
        &ev);
    /* Attributes alone never touch the data; one parse serves every data.* condition. */
    assert_int_equal(none, 0);
    assert_true(one > 0);
    assert_int_equal(many, one);

    /* Same for the extension object. */
    long ext_one = allocs_for("{\"exact\": {\"tenant\": \"acme\"}}", &ev);
    long ext_many = allocs_for("{\"all\": [{\"exact\": {\"tenant\": \"acme\"}},"
                               "           {\"exact\": {\"retries\": \"3\"}},"
                               "           {\"exact\": {\"beta\": \"true\"}}]}", &ev);
    assert_true(ext_one > 0);
    assert_int_equal(ext_many, ext_one);
}

/* ---- threads ---- */

typedef struct thread_arg {
    const mt_filter *f;
    int matches;
} thread_arg;

static void *eval_many(void *p)
{
    thread_arg *a = p;
    mt_event ev;
    order_event(&ev);
    for (int i = 0; i < 2000; i++) {
        bool m = false;
        if (mt_filter_eval(a->f, &ev, &m) == MT_OK && m) {
            a->matches++;
        }
    }
    return NULL;
}

static void test_filter_evaluates_concurrently(void **state)
{
    (void) state;
    mt_filter *f = compile_text("{\"all\": [{\"exact\": {\"data.currency\": \"EUR\"}},"
                                "           {\"exact\": {\"tenant\": \"acme\"}},"
                                "           {\"prefix\": {\"subject\": \"order-\"}}]}");
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].f = f;
        args[i].matches = 0;
        assert_int_equal(pthread_create(&th[i], NULL, eval_many, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].matches, 2000);
    }
    mt_filter_free(f);
}

/* ---- compile errors ---- */

static void test_filter_compile_errors_name_problem_and_path(void **state)
{
    (void) state;
    static const char *const cases[][2] = {
        {"[]", "expects a filter: an object with one of exact, prefix, suffix, all, "
               "any or not"},
        {"\"exact\"", "expects a filter: an object with one of exact, prefix, suffix, "
                      "all, any or not"},
        {"{}", "expects exactly one of exact, prefix, suffix, all, any or not "
               "(got 0 keys)"},
        {"{\"exact\": {\"type\": \"a\"}, \"prefix\": {\"type\": \"b\"}}",
         "expects exactly one of exact, prefix, suffix, all, any or not (got 2 keys)"},
        {"{\"exactly\": {\"type\": \"a\"}}",
         "unknown dialect 'exactly' (expected exact, prefix, suffix, all, any or not)"},
        {"{\"sql\": \"type = 'a'\"}",
         "the sql dialect is not supported (use exact, prefix, suffix, all, any or not)"},
        {"{\"all\": [{\"exact\": {\"type\": \"a\"}}, {\"prefix\": \"order-\"}]}",
         "all[1].prefix: expects an object of attribute: string"},
        {"{\"exact\": {}}", "exact: expects an object of attribute: string"},
        {"{\"suffix\": [\"x\"]}", "suffix: expects an object of attribute: string"},
        {"{\"all\": []}", "all: expects a non-empty list of filters"},
        {"{\"any\": {\"exact\": {\"type\": \"a\"}}}",
         "any: expects a non-empty list of filters"},
        {"{\"not\": [{\"exact\": {\"type\": \"a\"}}]}",
         "not: expects a filter: an object with one of exact, prefix, suffix, all, any "
         "or not"},
        {"{\"any\": [{\"exact\": {\"type\": \"a\"}}, {\"bogus\": 1}]}",
         "any[1]: unknown dialect 'bogus' (expected exact, prefix, suffix, all, any or "
         "not)"},
        {"{\"exact\": {\"data.count\": 3}}",
         "exact.data.count: expects a string, not a number"},
        {"{\"exact\": {\"type\": null}}", "exact.type: expects a string, not null"},
        {"{\"prefix\": {\"type\": [\"a\"]}}", "prefix.type: expects a string, not a list"},
        {"{\"all\": [{\"any\": [{\"not\": {\"exact\": {\"Subject\": \"x\"}}}]}]}",
         "all[0].any[0].not.exact.Subject: not an attribute name (a-z and 0-9, at most "
         "20 bytes) nor data.<path>"},
        {"{\"exact\": {\"\": \"x\"}}",
         "exact.: not an attribute name (a-z and 0-9, at most 20 bytes) nor data.<path>"},
        {"{\"exact\": {\"averyveryverylongattribute\": \"x\"}}",
         "exact.averyveryverylongattribute: not an attribute name (a-z and 0-9, at most "
         "20 bytes) nor data.<path>"},
        {"{\"exact\": {\"data\": \"x\"}}",
         "exact.data: 'data' needs a path: data.<key>[.<key>...]"},
        {"{\"exact\": {\"data.\": \"x\"}}",
         "exact.data.: 'data' needs a path: data.<key>[.<key>...]"},
        {"{\"exact\": {\"data.a..b\": \"x\"}}", "exact.data.a..b: the data path has an "
                                                "empty word"},
        {"{\"exact\": {\"data.a.\": \"x\"}}", "exact.data.a.: the data path has an "
                                              "empty word"},
        {"{\"exact\": {\"data..a\": \"x\"}}", "exact.data..a: the data path has an "
                                              "empty word"},
        {"{\"exact\": {\"sequence\": \"1\"}}",
         "exact.sequence: is assigned by the engine and cannot be filtered on"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_compile_error(cases[i][0], cases[i][1]);
    }
    expect_compile_error(NULL, "expects a filter: an object with one of exact, prefix, "
                               "suffix, all, any or not");
}

/* A NUL byte in a name, or in a value other than data's, could never match: refused. */
static void test_filter_nul_is_refused_where_it_could_never_match(void **state)
{
    (void) state;
    /* JSON text cannot put a NUL in a key (jansson refuses it), but a built object can. */
    json_t *inner = json_pack("{s:s}", "subject", "a");
    json_t *dialect = json_object();
    json_object_setn_new(dialect, "exact\0junk", 10, inner);
    json_t *attr = json_object();
    json_object_setn_new(attr, "subject\0", 8, json_string("a"));
    json_t *specs[] = {
        dialect,
        json_pack("{s:o}", "exact", attr),
        json_loads("{\"prefix\": {\"subject\": \"a\\u0000\"}}", JSON_ALLOW_NUL, NULL),
        json_loads("{\"exact\": {\"tenant\": \"\\u0000\"}}", JSON_ALLOW_NUL, NULL),
    };
    static const char *const want[] = {
        "a dialect name cannot hold a NUL byte (expected exact, prefix, suffix, all, any or "
        "not)",
        "exact.subject: the attribute name holds a NUL byte",
        "prefix.subject: holds a NUL byte, which no attribute can hold (only strings in data "
        "can)",
        "exact.tenant: holds a NUL byte, which no attribute can hold (only strings in data can)",
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        assert_non_null(specs[i]);
        mt_filter *f = NULL;
        char err[256];
        assert_int_equal(mt_filter_compile(specs[i], &f, err, sizeof err), MT_EINVAL);
        assert_null(f);
        assert_string_equal(err, want[i]);
        json_decref(specs[i]);
    }
}

/* mt_filter_compile_at names the value at fault, or the key naming it. */
static void test_filter_compile_at_names_the_node_at_fault(void **state)
{
    (void) state;
    json_t *spec = json_loads("{\"all\": [{\"exact\": {\"type\": \"a\"}}, "
                              "{\"prefix\": {\"type\": \"b\", \"Bad\": \"c\"}}]}", 0, NULL);
    assert_non_null(spec);
    json_t *prefix = json_object_get(json_array_get(json_object_get(spec, "all"), 1), "prefix");
    mt_filter *f = NULL;
    const json_t *at = NULL;
    bool key = false;
    assert_int_equal(mt_filter_compile_at(spec, &f, NULL, 0, &at, &key), MT_EINVAL);
    assert_ptr_equal(at, json_object_get(prefix, "Bad"));
    assert_true(key);
    json_object_set_new(prefix, "Bad", json_integer(1));
    json_object_set_new(prefix, "tenant", json_integer(2));
    assert_int_equal(mt_filter_compile_at(spec, &f, NULL, 0, &at, &key), MT_EINVAL);
    assert_ptr_equal(at, json_object_get(prefix, "Bad"));
    assert_false(key);
    json_object_del(prefix, "Bad");
    json_object_set_new(prefix, "tenant", json_string("x"));
    assert_int_equal(mt_filter_compile_at(spec, &f, NULL, 0, &at, &key), MT_OK);
    assert_null(at);
    assert_false(key);
    mt_filter_free(f);
    json_decref(spec);
}

static void test_filter_compile_error_buffer_may_be_small_or_absent(void **state)
{
    (void) state;
    json_t *spec = json_loads("{\"all\": [{\"prefix\": 1}]}", 0, NULL);
    assert_non_null(spec);
    mt_filter *f = (mt_filter *) &f;
    assert_int_equal(mt_filter_compile(spec, &f, NULL, 0), MT_EINVAL);
    assert_null(f);
    char small[10];
    memset(small, 'x', sizeof small);
    assert_int_equal(mt_filter_compile(spec, &f, small, sizeof small), MT_EINVAL);
    assert_string_equal(small, "all[0].pr");
    json_decref(spec);

    /* A valid filter leaves an empty message. */
    spec = json_loads("{\"exact\": {\"type\": \"a\"}}", 0, NULL);
    char err[64] = "stale";
    assert_int_equal(mt_filter_compile(spec, &f, err, sizeof err), MT_OK);
    assert_string_equal(err, "");
    mt_filter_free(f);
    json_decref(spec);
}

static void test_filter_compile_out_of_memory_is_enomem_without_leaks(void **state)
{
    (void) state;
    json_t *spec = json_loads(
        "{\"all\": [{\"exact\": {\"data.currency\": \"EUR\", \"tenant\": \"acme\"}},"
        "           {\"not\": {\"prefix\": {\"subject\": \"order-\"}}},"
        "           {\"any\": [{\"suffix\": {\"type\": \".x\"}}, {\"exact\": {\"id\": \"1\"}}]}]}",
        0, NULL);
    assert_non_null(spec);
    int failures = 0;
    for (long n = 1;; n++) {
        mt_filter *f = (mt_filter *) &f;
        char err[64];
        mt_mem_fail_after(n);
        mt_err rc = mt_filter_compile(spec, &f, err, sizeof err);
        mt_mem_fail_after(0);
        if (rc == MT_OK) {
            assert_non_null(f);
            mt_filter_free(f);
            break;
        }
        assert_int_equal(rc, MT_ENOMEM);
        assert_null(f);
        assert_string_equal(err, "out of memory");
        failures++;
        assert_true(n < 1000);
    }
    assert_true(failures >= 10);
    json_decref(spec);
}

static void test_filter_free_null_does_nothing(void **state)
{
    (void) state;
    mt_filter_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_exact_compares_whole_value_case_sensitively),
        cmocka_unit_test(test_filter_prefix_and_suffix),
        cmocka_unit_test(test_filter_several_pairs_must_all_hold),
        cmocka_unit_test(test_filter_all_any_not_and_nesting),
        cmocka_unit_test(test_filter_depth_limit_counts_levels),
        cmocka_unit_test(test_filter_missing_attributes_never_match),
        cmocka_unit_test(test_filter_extension_attributes),
        cmocka_unit_test(test_filter_data_paths_reach_nested_values),
        cmocka_unit_test(test_filter_numbers_and_booleans_compare_by_json_text),
        cmocka_unit_test(test_filter_real_text_follows_python_repr),
        cmocka_unit_test(test_filter_data_strings_may_hold_nul),
        cmocka_unit_test(test_filter_data_that_is_not_json_never_matches),
        cmocka_unit_test(test_filter_parses_data_at_most_once_per_evaluation),
        cmocka_unit_test(test_filter_evaluates_concurrently),
        cmocka_unit_test(test_filter_compile_errors_name_problem_and_path),
        cmocka_unit_test(test_filter_nul_is_refused_where_it_could_never_match),
        cmocka_unit_test(test_filter_compile_at_names_the_node_at_fault),
        cmocka_unit_test(test_filter_compile_error_buffer_may_be_small_or_absent),
        cmocka_unit_test(test_filter_compile_out_of_memory_is_enomem_without_leaks),
        cmocka_unit_test(test_filter_free_null_does_nothing),
    };
    return cmocka_run_group_tests_name("mt_filter", tests, NULL, NULL);
}

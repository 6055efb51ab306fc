/*
 * test_mt_topic.c - topic names and patterns, as specified in mt_topic.h.
 */
#include "mt_test.h"
#include "mt_topic.h"

typedef struct match_case {
    const char *pattern;
    const char *topic;
    bool match;
} match_case;

static void expect_match(const char *pattern, const char *topic, bool want)
{
    bool m = !want;
    mt_err rc = mt_topic_match(pattern, topic, &m);
    if (rc != MT_OK || m != want) {
        print_error("pattern '%s' topic '%s': rc %d match %d, want match %d\n", pattern, topic,
                    (int) rc, (int) m, (int) want);
    }
    assert_int_equal(rc, MT_OK);
    assert_int_equal(m, want);
}

static void expect_einval(const char *pattern, const char *topic)
{
    bool m = true;
    mt_err rc = mt_topic_match(pattern, topic, &m);
    if (rc != MT_EINVAL) {
        print_error("pattern '%s' topic '%s': rc %d, want MT_EINVAL\n",
                    pattern ? pattern : "(null)", topic ? topic : "(null)", (int) rc);
    }
    assert_int_equal(rc, MT_EINVAL);
    assert_false(m);
}

static void run_cases(const match_case *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        expect_match(c[i].pattern, c[i].topic, c[i].match);
    }
}

#define RUN(cases) run_cases(cases, sizeof cases / sizeof cases[0])

static void test_topic_literal_words_match_exactly(void **state)
{
    (void) state;
    static const match_case cases[] = {
        {"a", "a", true},
        {"order.eu.created", "order.eu.created", true},
        {"order.eu.created", "order.eu.create", false},
        {"order.eu.created", "order.eu.createdx", false},
        {"order.eu", "order.eu.created", false},
        {"order.eu.created", "order.eu", false},
        {"Order", "order", false},
        {"a.b", "ab", false},
        {"ab", "a.b", false},
    };
    RUN(cases);
}

static void test_topic_star_is_exactly_one_word(void **state)
{
    (void) state;
    static const match_case cases[] = {
        {"*", "a", true},
        {"*", "a.b", false},
        {"order.*.created", "order.eu.created", true},
        {"order.*.created", "order.created", false},
        {"order.*.created", "order.eu.de.created", false},
        {"*.*", "a.b", true},
        {"*.*", "a", false},
        {"*.*", "a.b.c", false},
        {"a.*", "a", false},
        {"*.b", "a.b", true},
    };
    RUN(cases);
}

static void test_topic_hash_at_start_middle_and_end(void **state)
{
    (void) state;
    static const match_case cases[] = {
        /* start */
        {"#.created", "created", true},
        {"#.created", "order.created", true},
        {"#.created", "order.eu.created", true},
        {"#.created", "order.eu.created.x", false},
        {"#.created", "creat", false},
        /* middle */
        {"order.#.created", "order.created", true},
        {"order.#.created", "order.eu.created", true},
        {"order.#.created", "order.eu.de.fr.created", true},
        {"order.#.created", "order.eu.cancelled", false},
        {"order.#.created", "payment.eu.created", false},
        {"order.#.created.#.x", "order.created.x", true},
        {"order.#.created.#.x", "order.a.created.b.c.x", true},
        {"order.#.created.#.x", "order.a.created.b.c", false},
        /* end */
        {"order.#", "order.eu.created", true},
        {"order.#", "orders.eu", false},
        {"#", "a", true},
    };
    RUN(cases);
}

static void test_topic_hash_matches_parent_level(void **state)
{
    (void) state;
    expect_match("a.#", "a", true);
    expect_match("a.#", "a.b.c", true);
    expect_match("a.*", "a.b.c", false);
    expect_match("a.#.#", "a", true);
    expect_match("#.a.#", "a", true);
}

static void test_topic_hash_alone_matches_everything(void **state)
{
    (void) state;
    static const char *const topics[] = {"a", "a.b", "order.eu.created", "x.y.z.w.v.u",
                                         "a>b.c"};
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        expect_match("#", topics[i], true);
        expect_match("#.#", topics[i], true);
        expect_match(">", topics[i], true);
    }
}

static void test_topic_star_and_hash_differ(void **state)
{
    (void) state;
    static const match_case cases[] = {
        {"a.*", "a", false},
        {"a.#", "a", true},
        {"a.*", "a.b", true},
        {"a.#", "a.b", true},
        {"a.*", "a.b.c", false},
        {"a.#", "a.b.c", true},
        /* '*' after '#' still needs a word of its own */
        {"#.*", "a", true},
        {"#.*.*", "a", false},
        {"#.*.*", "a.b", true},
        {"*.#.*", "a", false},
        {"*.#.*", "a.b", true},
        {"*.#.*", "a.b.c.d", true},
        {"a.*.#", "a", false},
        {"a.*.#", "a.b", true},
        {"a.#.*", "a.b", true},
        {"a.#.*", "a", false},
    };
    RUN(cases);
}

static void test_topic_hash_backtracks_to_later_literal(void **state)
{
    (void) state;
    static const match_case cases[] = {
        /* the first "b" seen is not the one the pattern needs */
        {"#.b.c", "a.b.x.b.c", true},
        {"#.b.c", "b.c.b", false},
        {"a.#.b.#.c", "a.b.b.c.c", true},
        {"a.#.b.#.c", "a.c.b", false},
        {"#.a.#.a", "a.a", true},
        {"#.a.#.a", "a", false},
        {"#.a.*", "a.a.a", true},
        {"#.a.*", "x.a", false},
    };
    RUN(cases);
}

static void test_topic_gt_is_trailing_hash_alias(void **state)
{
    (void) state;
    static const match_case cases[] = {
        {"order.>", "order", true}, /* as "order.#"; NATS would not match */
        {"order.>", "order.eu", true},
        {"order.>", "order.eu.created", true},
        {"order.>", "orders.eu", false},
        {"order.*.>", "order", false},
        {"order.*.>", "order.eu.created", true},
        {"#.created.>", "x.created", true},
        /* inside a longer word '>' is an ordinary byte, as in names */
        {"a>b", "a>b", true},
        {"a>b.*", "a>b.c", true},
        {"a.>b", "a.xb", false},
    };
    RUN(cases);
    assert_int_equal(mt_topic_validate_pattern("order.>"), MT_OK);
    assert_int_equal(mt_topic_validate_pattern(">"), MT_OK);
}

static void test_topic_misplaced_wildcards_are_einval(void **state)
{
    (void) state;
    static const char *const bad[] = {
        "order.*x",  "order.x*", "order.**",  "order.#x", "order.##", "#a",    "a#",
        "*#",        "order.>.x", ">.a",      ">.>",      "a.>.#",    "a*.b",  "a.b#.c",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(mt_topic_validate_pattern(bad[i]), MT_EINVAL);
        expect_einval(bad[i], "order.x");
    }
}

static void test_topic_empty_words_are_einval(void **state)
{
    (void) state;
    static const char *const bad[] = {"", ".", "..", ".a", "a.", "a..b", "a.b.", ".#", "#.",
                                      "*..*", "a. b", " a", "a\tb", "a b.c"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(mt_topic_validate_pattern(bad[i]), MT_EINVAL);
        assert_int_equal(mt_topic_validate_name(bad[i]), MT_EINVAL);
        expect_einval(bad[i], "a.b");
        expect_einval("#", bad[i]);
    }
}

static void test_topic_null_arguments_are_einval(void **state)
{
    (void) state;
    expect_einval(NULL, "a");
    expect_einval("a", NULL);
    expect_einval(NULL, NULL);
    assert_int_equal(mt_topic_validate_pattern(NULL), MT_EINVAL);
    assert_int_equal(mt_topic_validate_name(NULL), MT_EINVAL);
}

static void test_topic_name_holds_no_wildcards(void **state)
{
    (void) state;
    static const char *const bad[] = {"*", "#", "a.*", "a.#", "a*b", "a.b#"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(mt_topic_validate_name(bad[i]), MT_EINVAL);
        expect_einval("#", bad[i]);
        expect_einval(bad[i], bad[i]);
    }
    /* '>' is ordinary in a name: mt_event lets publishers use it in a type. */
    static const char *const good[] = {"a", "order.eu.created", "a>b", "a.>", "x-y_z.1.2",
                                       "ünïcode.wörd"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(mt_topic_validate_name(good[i]), MT_OK);
        expect_match("#", good[i], true);
        expect_match(good[i], good[i], true); /* "a.>" as a pattern is "a.#" */
    }
}

static void test_topic_bad_pattern_is_einval_even_after_a_mismatch(void **state)
{
    (void) state;
    /* The first word already fails to match; the bad last word is still reported. */
    expect_einval("x.b.*x", "a.b.c");
    expect_einval("x.>.y", "a");
    expect_einval("a.b.", "z");
    /* And a bad topic after a pattern that could never match it. */
    expect_einval("x", "a.b.*");
}

static void test_topic_long_topics_with_many_hashes_stay_cheap(void **state)
{
    (void) state;
    /* 5000 words "w.w.w...": a backtracking matcher without memo would explode. */
    size_t nwords = 5000;
    char *topic = malloc(nwords * 2 + 2);
    assert_non_null(topic);
    for (size_t i = 0; i < nwords; i++) {
        topic[2 * i] = 'w';
        topic[2 * i + 1] = '.';
    }
    topic[2 * nwords - 1] = '\0';
    expect_match("#.#.#.#.a", topic, false);
    expect_match("#.#.#.#.w", topic, true);
    expect_match("#.w.#.w.#.w.#.w.#.x", topic, false);
    expect_match("#.*.#.*.#.*.#", topic, true);
    expect_match("w.#.w", topic, true);
    /* the last word differs */
    topic[2 * nwords - 2] = 'a';
    expect_match("#.#.#.#.a", topic, true);
    expect_match("#.w.#.w.#.a", topic, true);
    expect_match("#.a.#.a", topic, false);

    /* Many '#' in the pattern too. */
    size_t nhash = 300;
    char *pattern = malloc(nhash * 4 + 8);
    assert_non_null(pattern);
    pattern[0] = '\0';
    for (size_t i = 0; i < nhash; i++) {
        strcat(pattern, "#.w.");
    }
    strcat(pattern, "b");
    expect_match(pattern, topic, false);
    free(pattern);
    free(topic);
}

/*
 * A deliberately naive recursive matcher over word arrays: the definition,
 * not an algorithm. Checked exhaustively against mt_topic_match on short
 * patterns over {a, b, *, #} and topics over {a, b}.
 */
static bool ref_match(const char *const *p, int np, const char *const *t, int nt)
{
    if (np == 0) {
        return nt == 0;
    }
    if (strcmp(p[0], "#") == 0) {
        for (int k = 0; k <= nt; k++) {
            if (ref_match(p + 1, np - 1, t + k, nt - k)) {
                return true;
            }
        }
        return false;
    }
    if (nt == 0) {
        return false;
    }
    return (strcmp(p[0], "*") == 0 || strcmp(p[0], t[0]) == 0) &&
           ref_match(p + 1, np - 1, t + 1, nt - 1);
}

static void join(char *out, const char *const *w, int n)
{
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (i) {
            strcat(out, ".");
        }
        strcat(out, w[i]);
    }
}

static void test_topic_agrees_with_reference_on_all_small_cases(void **state)
{
    (void) state;
    static const char *const pwords[] = {"a", "b", "*", "#"};
    static const char *const twords[] = {"a", "b"};
    int checked = 0;
    for (int np = 1; np <= 5; np++) {
        int pcount = 1 << (2 * np);
        for (int pc = 0; pc < pcount; pc++) {
            const char *p[5];
            for (int i = 0; i < np; i++) {
                p[i] = pwords[(pc >> (2 * i)) & 3];
            }
            char ps[32];
            join(ps, p, np);
            for (int nt = 1; nt <= 6; nt++) {
                for (int tc = 0; tc < (1 << nt); tc++) {
                    const char *t[6];
                    for (int i = 0; i < nt; i++) {
                        t[i] = twords[(tc >> i) & 1];
                    }
                    char ts[32];
                    join(ts, t, nt);
                    expect_match(ps, ts, ref_match(p, np, t, nt));
                    checked++;
                }
            }
        }
    }
    assert_true(checked > 100000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_literal_words_match_exactly),
        cmocka_unit_test(test_topic_star_is_exactly_one_word),
        cmocka_unit_test(test_topic_hash_at_start_middle_and_end),
        cmocka_unit_test(test_topic_hash_matches_parent_level),
        cmocka_unit_test(test_topic_hash_alone_matches_everything),
        cmocka_unit_test(test_topic_star_and_hash_differ),
        cmocka_unit_test(test_topic_hash_backtracks_to_later_literal),
        cmocka_unit_test(test_topic_gt_is_trailing_hash_alias),
        cmocka_unit_test(test_topic_misplaced_wildcards_are_einval),
        cmocka_unit_test(test_topic_empty_words_are_einval),
        cmocka_unit_test(test_topic_null_arguments_are_einval),
        cmocka_unit_test(test_topic_name_holds_no_wildcards),
        cmocka_unit_test(test_topic_bad_pattern_is_einval_even_after_a_mismatch),
        cmocka_unit_test(test_topic_long_topics_with_many_hashes_stay_cheap),
        cmocka_unit_test(test_topic_agrees_with_reference_on_all_small_cases),
    };
    return cmocka_run_group_tests_name("mt_topic", tests, NULL, NULL);
}

/*
 * test_mt_util.c - strict number, size and duration parsing, RFC 3339
 * times, and big-endian byte order: every accepted form, every refusal,
 * and the out-param reset on error that the header promises.
 */
#include <time.h>
#include "mt_diag.h"
#include "mt_test.h"
#include "mt_util.h"

#define KIB (1ULL << 10)
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define TIB (1ULL << 40)

#define N_CASES(a) (sizeof(a) / sizeof((a)[0]))

typedef struct u64_case {
    const char *in;
    mt_err rc;
    uint64_t want; /* on MT_OK */
} u64_case;

typedef struct i64_case {
    const char *in;
    mt_err rc;
    int64_t want; /* on MT_OK */
} i64_case;

typedef mt_err (*u64_parser)(const char *s, uint64_t *out);

/* Runs 'parse' over the cases; on error the out-param must be 0. */
static void expect_u64_cases(const char *what, u64_parser parse, const u64_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t out = 12345;
        mt_err rc = parse(cases[i].in, &out);
        if (rc != cases[i].rc || (rc == MT_OK && out != cases[i].want)) {
            print_error("%s('%s'): got %s %llu, want %s %llu\n", what,
                        cases[i].in ? cases[i].in : "(null)", mt_err_str(rc),
                        (unsigned long long) out, mt_err_str(cases[i].rc),
                        (unsigned long long) cases[i].want);
            fail();
        }
        if (rc != MT_OK) {
            assert_int_equal(out, 0);
        }
    }
}

/* ---- integers ---- */

static void test_util_parse_u64_accepts_whole_decimal_strings_only(void **state)
{
    (void) state;
    static const u64_case cases[] = {
        {"0", MT_OK, 0},
        {"1", MT_OK, 1},
        {"007", MT_OK, 7},
        {"18446744073709551615", MT_OK, UINT64_MAX},
        {"18446744073709551616", MT_EINVAL, 0},
        {"99999999999999999999999", MT_EINVAL, 0},
        {"-1", MT_EINVAL, 0},
        {"-0", MT_EINVAL, 0},
        {"+1", MT_EINVAL, 0},
        {" 1", MT_EINVAL, 0},
        {"1 ", MT_EINVAL, 0},
        {"1\n", MT_EINVAL, 0},
        {"", MT_EINVAL, 0},
        {"1a", MT_EINVAL, 0},
        {"0x10", MT_EINVAL, 0},
        {"1.0", MT_EINVAL, 0},
        {"1e3", MT_EINVAL, 0},
        {NULL, MT_EINVAL, 0},
    };
    expect_u64_cases("mt_parse_u64", mt_parse_u64, cases, N_CASES(cases));
}

static void test_util_parse_i64_allows_one_leading_minus(void **state)
{
    (void) state;
    static const i64_case cases[] = {
        {"0", MT_OK, 0},
        {"-0", MT_OK, 0},
        {"42", MT_OK, 42},
        {"-42", MT_OK, -42},
        {"9223372036854775807", MT_OK, INT64_MAX},
        {"-9223372036854775808", MT_OK, INT64_MIN},
        {"9223372036854775808", MT_EINVAL, 0},
        {"-9223372036854775809", MT_EINVAL, 0},
        {"18446744073709551615", MT_EINVAL, 0},
        {"-18446744073709551616", MT_EINVAL, 0},
        {"-", MT_EINVAL, 0},
        {"--1", MT_EINVAL, 0},
        {"+1", MT_EINVAL, 0},
        {"- 1", MT_EINVAL, 0},
        {" -1", MT_EINVAL, 0},
        {"-1 ", MT_EINVAL, 0},
        {"", MT_EINVAL, 0},
        {"12x", MT_EINVAL, 0},
        {NULL, MT_EINVAL, 0},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        int64_t out = 12345;
        mt_err rc = mt_parse_i64(cases[i].in, &out);
        if (rc != cases[i].rc || (rc == MT_OK && out != cases[i].want)) {
            print_error("mt_parse_i64('%s'): got %s %lld\n",
                        cases[i].in ? cases[i].in : "(null)", mt_err_str(rc), (long long) out);
            fail();
        }
        if (rc != MT_OK) {
            assert_int_equal(out, 0);
        }
    }
}

/* ---- sizes ---- */

static void test_util_parse_size_binary_and_decimal_units(void **state)
{
    (void) state;
    static const u64_case cases[] = {
        {"0", MT_OK, 0},
        {"512", MT_OK, 512},
        {"1048576", MT_OK, MIB},
        {"1B", MT_OK, 1},
        {"1KiB", MT_OK, KIB},
        {"256KiB", MT_OK, 256 * KIB},
        {"1MiB", MT_OK, MIB},
        {"64MiB", MT_OK, 64 * MIB},
        {"1GiB", MT_OK, GIB},
        {"8GiB", MT_OK, 8 * GIB},
        {"1TiB", MT_OK, TIB},
        {"1KB", MT_OK, 1000},
        {"1MB", MT_OK, 1000000},
        {"1GB", MT_OK, 1000000000},
        {"1TB", MT_OK, 1000000000000ULL},
        {"0TiB", MT_OK, 0},
        {"18446744073709551615", MT_OK, UINT64_MAX},
        {"18446744073709551615B", MT_OK, UINT64_MAX},
    };
    expect_u64_cases("mt_parse_size", mt_parse_size, cases, N_CASES(cases));
}

static void test_util_parse_size_refuses_overflow(void **state)
{
    (void) state;
    static const u64_case cases[] = {
        {"16777215TiB", MT_OK, 16777215ULL * TIB},
        {"16777216TiB", MT_EINVAL, 0},   /* exactly 2^64 */
        {"17179869183GiB", MT_OK, 17179869183ULL * GIB},
        {"17179869184GiB", MT_EINVAL, 0},
        {"18446744073709551KB", MT_OK, 18446744073709551000ULL},
        {"18446744073709552KB", MT_EINVAL, 0},
        {"18446744073709551616", MT_EINVAL, 0},
        {"18446744073709551616B", MT_EINVAL, 0},
        {"99999999999TiB", MT_EINVAL, 0},
    };
    expect_u64_cases("mt_parse_size", mt_parse_size, cases, N_CASES(cases));
}

static void test_util_parse_size_refuses_bad_units_and_forms(void **state)
{
    (void) state;
    static const u64_case cases[] = {
        {"", MT_EINVAL, 0},
        {"KiB", MT_EINVAL, 0},
        {"B", MT_EINVAL, 0},
        {"1kib", MT_EINVAL, 0},
        {"1Kib", MT_EINVAL, 0},
        {"1kB", MT_EINVAL, 0},
        {"1b", MT_EINVAL, 0},
        {"1K", MT_EINVAL, 0},
        {"1Ki", MT_EINVAL, 0},
        {"1KiBs", MT_EINVAL, 0},
        {"1PiB", MT_EINVAL, 0},
        {"1PB", MT_EINVAL, 0},
        {"1 KiB", MT_EINVAL, 0},
        {"1KiB ", MT_EINVAL, 0},
        {" 1KiB", MT_EINVAL, 0},
        {"1.5GiB", MT_EINVAL, 0},
        {"-1", MT_EINVAL, 0},
        {"-1KiB", MT_EINVAL, 0},
        {"+1KiB", MT_EINVAL, 0},
        {"1ms", MT_EINVAL, 0},
        {NULL, MT_EINVAL, 0},
    };
    expect_u64_cases("mt_parse_size", mt_parse_size, cases, N_CASES(cases));
}

/* ---- durations ---- */

static void test_util_parse_duration_every_unit(void **state)
{
    (void) state;
    static const u64_case cases[] = {
        {"0ms", MT_OK, 0},
        {"200ms", MT_OK, 200},
        {"1s", MT_OK, 1000},
        {"30s", MT_OK, 30000},
        {"1m", MT_OK, 60000},
        {"5m", MT_OK, 300000},
        {"1h", MT_OK, 3600000},
        {"2h", MT_OK, 7200000},
        {"1d", MT_OK, 86400000},
        {"7d", MT_OK, 604800000},
        {"0d", MT_OK, 0},
        {"18446744073709551615ms", MT_OK, UINT64_MAX},
    };
    expect_u64_cases("mt_parse_duration", mt_parse_duration, cases, N_CASES(cases));
}

static void test_util_parse_duration_refuses_missing_unit_and_overflow(void **state)
{
    (void) state;
    static const u64_case cases[] = {
        {"0", MT_EINVAL, 0},
        {"30", MT_EINVAL, 0},
        {"", MT_EINVAL, 0},
        {"s", MT_EINVAL, 0},
        {"ms", MT_EINVAL, 0},
        {"1S", MT_EINVAL, 0},
        {"1M", MT_EINVAL, 0},
        {"1 s", MT_EINVAL, 0},
        {"1s ", MT_EINVAL, 0},
        {"1sec", MT_EINVAL, 0},
        {"1us", MT_EINVAL, 0},
        {"1w", MT_EINVAL, 0},
        {"1.5s", MT_EINVAL, 0},
        {"-1s", MT_EINVAL, 0},
        {"1h30m", MT_EINVAL, 0},
        {"1KiB", MT_EINVAL, 0},
        {"18446744073709551616ms", MT_EINVAL, 0},
        {"18446744073709551s", MT_OK, 18446744073709551000ULL},
        {"18446744073709552s", MT_EINVAL, 0},
        {"307445734561825m", MT_OK, 307445734561825ULL * 60000},
        {"307445734561826m", MT_EINVAL, 0},
        {"5124095576030h", MT_OK, 5124095576030ULL * 3600000},
        {"5124095576031h", MT_EINVAL, 0},
        {"213503982334d", MT_OK, 18446744073657600000ULL},
        {"213503982335d", MT_EINVAL, 0},
        {NULL, MT_EINVAL, 0},
    };
    expect_u64_cases("mt_parse_duration", mt_parse_duration, cases, N_CASES(cases));
}

/* ---- RFC 3339 times ---- */

#define T_2026 1767323045000000LL /* 2026-01-02T03:04:05Z */

typedef struct time_case {
    const char *in;
    mt_err rc;
    int64_t us; /* on MT_OK */
} time_case;

static void expect_time_cases(const time_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int64_t us = 12345;
        mt_err rc = mt_time_parse(cases[i].in, &us);
        if (rc != cases[i].rc || (rc == MT_OK && us != cases[i].us)) {
            print_error("mt_time_parse('%s'): got %s %lld, want %s %lld\n",
                        cases[i].in ? cases[i].in : "(null)", mt_err_str(rc), (long long) us,
                        mt_err_str(cases[i].rc), (long long) cases[i].us);
            fail();
        }
        if (rc != MT_OK) {
            assert_int_equal(us, 0);
        }
    }
}

static void test_util_time_parse_utc_and_offsets(void **state)
{
    (void) state;
    static const time_case cases[] = {
        {"1970-01-01T00:00:00Z", MT_OK, 0},
        {"2026-01-02T03:04:05Z", MT_OK, T_2026},
        {"2026-01-02T03:04:05+00:00", MT_OK, T_2026},
        {"2026-01-02T03:04:05-00:00", MT_OK, T_2026},
        {"2026-01-02T05:04:05+02:00", MT_OK, T_2026},
        {"2026-01-01T21:34:05-05:30", MT_OK, T_2026},
        {"2026-01-03T03:03:05+23:59", MT_OK, T_2026},
        {"2026-01-02t03:04:05z", MT_OK, T_2026},
        {"2026-01-02 03:04:05Z", MT_OK, T_2026},
        {"1969-12-31T23:59:59Z", MT_OK, -1000000},
        {"0001-01-01T00:00:00Z", MT_OK, -62135596800000000LL},
        {"9999-12-31T23:59:59.999999Z", MT_OK, 253402300799999999LL},
    };
    expect_time_cases(cases, N_CASES(cases));
}

static void test_util_time_parse_fractions_of_one_to_nine_digits(void **state)
{
    (void) state;
    static const time_case cases[] = {
        {"2026-01-02T03:04:05.1Z", MT_OK, T_2026 + 100000},
        {"2026-01-02T03:04:05.12Z", MT_OK, T_2026 + 120000},
        {"2026-01-02T03:04:05.123Z", MT_OK, T_2026 + 123000},
        {"2026-01-02T03:04:05.1234Z", MT_OK, T_2026 + 123400},
        {"2026-01-02T03:04:05.12345Z", MT_OK, T_2026 + 123450},
        {"2026-01-02T03:04:05.123456Z", MT_OK, T_2026 + 123456},
        {"2026-01-02T03:04:05.1234567Z", MT_OK, T_2026 + 123456},
        {"2026-01-02T03:04:05.12345678Z", MT_OK, T_2026 + 123456},
        {"2026-01-02T03:04:05.123456789Z", MT_OK, T_2026 + 123456},
        {"2026-01-02T03:04:05.000001Z", MT_OK, T_2026 + 1},
        {"2026-01-02T03:04:05.0000009Z", MT_OK, T_2026},
        {"2026-01-02T05:04:05.5+02:00", MT_OK, T_2026 + 500000},
        {"1969-12-31T23:59:59.5Z", MT_OK, -500000},
        {"2026-01-02T03:04:05.1234567890Z", MT_EINVAL, 0},
        {"2026-01-02T03:04:05.Z", MT_EINVAL, 0},
        {"2026-01-02T03:04:05.", MT_EINVAL, 0},
        {"2026-01-02T03:04:05,5Z", MT_EINVAL, 0},
        {"2026-01-02T03:04:05.5.5Z", MT_EINVAL, 0},
    };
    expect_time_cases(cases, N_CASES(cases));
}

static void test_util_time_parse_checks_the_calendar(void **state)
{
    (void) state;
    static const time_case cases[] = {
        {"2024-02-29T12:00:00Z", MT_OK, 1709208000000000LL},
        {"2000-02-29T00:00:00Z", MT_OK, 951782400000000LL},
        {"2023-02-29T12:00:00Z", MT_EINVAL, 0},
        {"1900-02-29T00:00:00Z", MT_EINVAL, 0},
        {"2100-02-29T00:00:00Z", MT_EINVAL, 0},
        {"2024-02-30T00:00:00Z", MT_EINVAL, 0},
        {"2026-04-31T00:00:00Z", MT_EINVAL, 0},
        {"2026-12-31T00:00:00Z", MT_OK, 1798675200000000LL},
        {"2026-12-32T00:00:00Z", MT_EINVAL, 0},
        {"2026-13-01T00:00:00Z", MT_EINVAL, 0},
        {"2026-00-01T00:00:00Z", MT_EINVAL, 0},
        {"2026-01-00T00:00:00Z", MT_EINVAL, 0},
        {"2026-01-02T24:00:00Z", MT_EINVAL, 0},
        {"2026-01-02T23:60:00Z", MT_EINVAL, 0},
        {"2026-01-02T23:59:61Z", MT_EINVAL, 0},
        /* A leap second is RFC 3339; it is counted as the second before it. */
        {"2016-12-31T23:59:60Z", MT_OK, 1483228799000000LL},
        {"2026-01-02T03:04:05+24:00", MT_EINVAL, 0},
        {"2026-01-02T03:04:05+02:60", MT_EINVAL, 0},
    };
    expect_time_cases(cases, N_CASES(cases));
}

static void test_util_time_parse_refuses_garbage(void **state)
{
    (void) state;
    static const char *const bad[] = {
        "",
        "now",
        "2026",
        "2026-01-02",
        "2026-01-02T03:04",
        "2026-01-02T03:04:05",           /* no zone */
        "2026-01-02T03:04:05.123",       /* no zone */
        "2026-1-02T03:04:05Z",
        "2026-01-2T03:04:05Z",
        "26-01-02T03:04:05Z",
        "2026/01/02T03:04:05Z",
        "2026-01-02X03:04:05Z",
        "2026-01-02T3:04:05Z",
        "2026-01-02T03:04:5Z",
        "2026-01-02T03-04-05Z",
        "2026-01-02T03:04:05+0200",
        "2026-01-02T03:04:05+02",
        "2026-01-02T03:04:05+2:00",
        "2026-01-02T03:04:05 +02:00",
        "2026-01-02T03:04:05Z ",
        " 2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05ZZ",
        "2026-01-02T03:04:05UTC",
        "2026-01-02T03:04:05+02:00Z",
        "+2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05\n",
        "2026-01-02TT03:04:05Z",
        NULL,
    };
    for (size_t i = 0; i < N_CASES(bad); i++) {
        int64_t us = 12345;
        mt_err rc = mt_time_parse(bad[i], &us);
        if (rc != MT_EINVAL) {
            print_error("mt_time_parse('%s'): accepted as %lld\n", bad[i] ? bad[i] : "(null)",
                        (long long) us);
        }
        assert_int_equal(rc, MT_EINVAL);
        assert_int_equal(us, 0);
    }
}

static void test_util_time_format_us_is_utc_with_microseconds(void **state)
{
    (void) state;
    static const struct {
        int64_t us;
        const char *want;
    } cases[] = {
        {0, "1970-01-01T00:00:00.000000Z"},
        {T_2026 + 123456, "2026-01-02T03:04:05.123456Z"},
        {1709208000000001LL, "2024-02-29T12:00:00.000001Z"},
        {-1, "1969-12-31T23:59:59.999999Z"},
        {-500000, "1969-12-31T23:59:59.500000Z"},
        {-1000000, "1969-12-31T23:59:59.000000Z"},
        {253402300799999999LL, "9999-12-31T23:59:59.999999Z"},
    };
    for (size_t i = 0; i < N_CASES(cases); i++) {
        char buf[32];
        memset(buf, 'x', sizeof buf);
        mt_time_format_us(cases[i].us, buf, sizeof buf);
        assert_string_equal(buf, cases[i].want);
    }
}

static void test_util_time_format_then_parse_round_trips(void **state)
{
    (void) state;
    static const int64_t values[] = {
        0, 1, 999999, 1000000, T_2026, T_2026 + 123456, 1709208000000000LL, -1, -500000,
        -1000001, 951782400000000LL, -62135596800000000LL, 253402300799999999LL,
    };
    for (size_t i = 0; i < N_CASES(values); i++) {
        char buf[32];
        mt_time_format_us(values[i], buf, sizeof buf);
        int64_t back = 0;
        if (mt_time_parse(buf, &back) != MT_OK || back != values[i]) {
            print_error("%lld -> '%s' -> %lld\n", (long long) values[i], buf, (long long) back);
            fail();
        }
    }
    /* And from text: a parsed time formats back to its UTC form. */
    int64_t us = 0;
    assert_int_equal(mt_time_parse("2026-01-01T21:34:05.25-05:30", &us), MT_OK);
    char buf[32];
    mt_time_format_us(us, buf, sizeof buf);
    assert_string_equal(buf, "2026-01-02T03:04:05.250000Z");
}

/* The calendar arithmetic agrees with the C library's gmtime_r, year 0 to 9999. */
static void test_util_time_format_agrees_with_gmtime(void **state)
{
    (void) state;
    const int64_t lo = -62167219200LL; /* 0000-01-01T00:00:00Z */
    const int64_t hi = 253402300799LL; /* 9999-12-31T23:59:59Z */
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 200000; i++) {
        int64_t secs;
        if (i < 4000) {
            secs = lo + (int64_t) i * 86399; /* day boundaries, then spread */
        } else if (i < 8000) {
            secs = -86400LL * 2000 + (int64_t) (i - 4000) * 86400 - (i & 1); /* around 1970 */
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secs = lo + (int64_t) (x % (uint64_t) (hi - lo + 1));
        }
        time_t tt = (time_t) secs;
        struct tm tm;
        assert_non_null(gmtime_r(&tt, &tm));
        char want[96], got[96];
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.000042Z", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        mt_time_format_us(secs * 1000000 + 42, got, sizeof got);
        if (strcmp(want, got) != 0) {
            print_error("%lld s: want %s, got %s\n", (long long) secs, want, got);
            fail();
        }
    }
}

static void test_util_clocks_move_forward(void **state)
{
    (void) state;
    int64_t now = mt_now_us();
    assert_true(now > T_2026 - 366LL * 86400 * 1000000 * 10); /* not zero, not seconds */
    int64_t a = mt_mono_us();
    int64_t b = mt_mono_us();
    assert_true(b >= a);
}

/* ---- byte order ---- */

static void test_util_be64_is_big_endian_and_round_trips(void **state)
{
    (void) state;
    uint8_t buf[10];
    memset(buf, 0xee, sizeof buf);
    mt_put_be64(buf + 1, 0x0102030405060708ULL);
    static const uint8_t want[10] = {0xee, 1, 2, 3, 4, 5, 6, 7, 8, 0xee};
    assert_memory_equal(buf, want, sizeof want);
    assert_int_equal(mt_get_be64(buf + 1), 0x0102030405060708ULL);

    static const uint64_t values[] = {0, 1, 0xff, 0x100, 0x8000000000000000ULL, UINT64_MAX,
                                      0xfedcba9876543210ULL};
    for (size_t i = 0; i < N_CASES(values); i++) {
        uint8_t b[8];
        mt_put_be64(b, values[i]);
        assert_int_equal(mt_get_be64(b), values[i]);
    }

    /* Big-endian keys sort like the numbers they hold. */
    uint8_t lo[8], hi[8];
    mt_put_be64(lo, 255);
    mt_put_be64(hi, 256);
    assert_true(memcmp(lo, hi, 8) < 0);
}

/*
 * Messages from outside keep what is readable: each byte that is not UTF-8
 * becomes U+FFFD. The same decoding (mt_utf8_len) says what is UTF-8.
 */
static void test_diag_text_replaces_only_the_bytes_that_are_not_utf8(void **state)
{
    (void) state;
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } cases[] = {
        {"plain", 5, "plain"},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"},
        {"bad\xffutf8", 8, "bad\xef\xbf\xbdutf8"},
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},             /* overlong */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
        {"x\xe2\x82", 3, "x\xef\xbf\xbd\xef\xbf\xbd"},             /* cut short */
        {"a\0b", 3, "a\xef\xbf\xbd" "b"},                             /* NUL */
        {"\xf4\x90\x80\x80", 4,
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* past U+10FFFF */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* mt_utf8_valid, which the JSON encoder uses, agrees; NUL is a character to it */
        bool valid = strcmp(cases[i].in, cases[i].want) == 0 || cases[i].in[1] == '\0';
        assert_int_equal(mt_utf8_valid(cases[i].in, cases[i].n), valid);
        json_t *v = mt_diag_text(cases[i].in, cases[i].n);
        assert_non_null(v);
        assert_string_equal(json_string_value(v), cases[i].want);
        json_decref(v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_util_parse_u64_accepts_whole_decimal_strings_only),
        cmocka_unit_test(test_diag_text_replaces_only_the_bytes_that_are_not_utf8),
        cmocka_unit_test(test_util_parse_i64_allows_one_leading_minus),
        cmocka_unit_test(test_util_parse_size_binary_and_decimal_units),
        cmocka_unit_test(test_util_parse_size_refuses_overflow),
        cmocka_unit_test(test_util_parse_size_refuses_bad_units_and_forms),
        cmocka_unit_test(test_util_parse_duration_every_unit),
        cmocka_unit_test(test_util_parse_duration_refuses_missing_unit_and_overflow),
        cmocka_unit_test(test_util_time_parse_utc_and_offsets),
        cmocka_unit_test(test_util_time_parse_fractions_of_one_to_nine_digits),
        cmocka_unit_test(test_util_time_parse_checks_the_calendar),
        cmocka_unit_test(test_util_time_parse_refuses_garbage),
        cmocka_unit_test(test_util_time_format_us_is_utc_with_microseconds),
        cmocka_unit_test(test_util_time_format_then_parse_round_trips),
        cmocka_unit_test(test_util_time_format_agrees_with_gmtime),
        cmocka_unit_test(test_util_clocks_move_forward),
        cmocka_unit_test(test_util_be64_is_big_endian_and_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

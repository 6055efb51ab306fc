#include <ctype.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "mt_util.h"

int64_t mt_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mt_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool mt_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    bool ok = fsync(fd) == 0;
    close(fd);
    return ok;
}

/* Parses leading digits; returns the count consumed, or -1 on overflow. */
static int parse_digits(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    int n = 0;
    while (isdigit((unsigned char) s[n])) {
        uint64_t d = (uint64_t) (s[n] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return -1;
        }
        v = v * 10 + d;
        n++;
    }
    *out = v;
    return n;
}

size_t mt_utf8_len(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *) s;
    unsigned c = p[0];
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || len > n) {
        return 0;
    }
    if (len == 1) {
        return 1;
    }
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    static const unsigned least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0; /* overlong, out of range, or a surrogate */
    }
    return len;
}

bool mt_utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        if ((unsigned char) s[i] < 0x80) {
            i++; /* most text: no call */
            continue;
        }
        size_t len = mt_utf8_len(s + i, n - i);
        if (len == 0) {
            return false;
        }
        i += len;
    }
    return true;
}

mt_err mt_parse_u64(const char *s, uint64_t *out)
{
    *out = 0;
    if (!s) {
        return MT_EINVAL;
    }
    uint64_t v;
    int n = parse_digits(s, &v);
    if (n <= 0 || s[n] != '\0') {
        return MT_EINVAL;
    }
    *out = v;
    return MT_OK;
}

mt_err mt_parse_i64(const char *s, int64_t *out)
{
    *out = 0;
    if (!s) {
        return MT_EINVAL;
    }
    bool neg = s[0] == '-';
    uint64_t v;
    if (mt_parse_u64(s + neg, &v)) {
        return MT_EINVAL;
    }
    if (neg ? v > (uint64_t) INT64_MAX + 1 : v > (uint64_t) INT64_MAX) {
        return MT_EINVAL;
    }
    *out = neg ? (int64_t) (0 - v) : (int64_t) v;
    return MT_OK;
}

typedef struct unit {
    const char *name;
    uint64_t mult;
} unit;

static mt_err parse_with_units(const char *s, const unit *units, bool unit_required,
                               uint64_t *out)
{
    *out = 0;
    if (!s) {
        return MT_EINVAL;
    }
    uint64_t v;
    int n = parse_digits(s, &v);
    if (n <= 0) {
        return MT_EINVAL;
    }
    const char *u = s + n;
    if (*u == '\0') {
        if (unit_required) {
            return MT_EINVAL;
        }
        *out = v;
        return MT_OK;
    }
    for (; units->name; units++) {
        if (strcmp(u, units->name) == 0) {
            if (v && units->mult > UINT64_MAX / v) {
                return MT_EINVAL;
            }
            *out = v * units->mult;
            return MT_OK;
        }
    }
    return MT_EINVAL;
}

mt_err mt_parse_size(const char *s, uint64_t *bytes)
{
    static const unit units[] = {
        {"B", 1}, {"KiB", 1ULL << 10}, {"MiB", 1ULL << 20}, {"GiB", 1ULL << 30},
        {"TiB", 1ULL << 40}, {"KB", 1000ULL}, {"MB", 1000000ULL}, {"GB", 1000000000ULL},
        {"TB", 1000000000000ULL}, {NULL, 0},
    };
    return parse_with_units(s, units, false, bytes);
}

mt_err mt_parse_duration(const char *s, uint64_t *ms)
{
    static const unit units[] = {
        {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {NULL, 0},
    };
    return parse_with_units(s, units, true, ms);
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned) (y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t) doe - 719468;
}

/* The inverse: y-m-d of the day 'z' days after 1970-01-01. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned) (z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t) yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Reads exactly 'n' digits at *p into *v. */
static bool fixed_digits(const char **p, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char) (*p)[i])) {
            return false;
        }
        x = x * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *v = x;
    return true;
}

mt_err mt_time_parse(const char *s, int64_t *us)
{
    *us = 0;
    if (!s) {
        return MT_EINVAL;
    }
    const char *p = s;
    int y, mo, d, h, mi, se;
    if (!fixed_digits(&p, 4, &y) || *p++ != '-' || !fixed_digits(&p, 2, &mo) ||
        *p++ != '-' || !fixed_digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' ')) {
        return MT_EINVAL;
    }
    p++;
    if (!fixed_digits(&p, 2, &h) || *p++ != ':' || !fixed_digits(&p, 2, &mi) ||
        *p++ != ':' || !fixed_digits(&p, 2, &se)) {
        return MT_EINVAL;
    }
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || se > 60) {
        return MT_EINVAL;
    }
    if (d > mdays[mo - 1] + (mo == 2 && is_leap(y))) {
        return MT_EINVAL;
    }
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (isdigit((unsigned char) *p)) {
            if (digits < 6) {
                frac = frac * 10 + (*p - '0');
            }
            digits++;
            p++;
        }
        if (digits == 0 || digits > 9) {
            return MT_EINVAL;
        }
        for (int i = digits; i < 6; i++) {
            frac *= 10;
        }
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1;
        int oh, om;
        if (!fixed_digits(&p, 2, &oh) || *p++ != ':' || !fixed_digits(&p, 2, &om) || oh > 23 ||
            om > 59) {
            return MT_EINVAL;
        }
        offset_s = sign * (oh * 3600 + om * 60);
    } else {
        return MT_EINVAL;
    }
    if (*p != '\0') {
        return MT_EINVAL;
    }
    int64_t secs = days_from_civil(y, (unsigned) mo, (unsigned) d) * 86400 + h * 3600 + mi * 60 +
                   (se == 60 ? 59 : se) - offset_s;
    *us = secs * 1000000 + frac;
    return MT_OK;
}

void mt_time_format_us(int64_t us, char *buf, size_t len)
{
    int64_t secs = us / 1000000;
    int64_t frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    /*
     * Every event a handler or a reader is given carries one of these, and
     * events come in runs within one second: the date and time of the last
     * second formatted on this thread are kept.
     */
    static __thread int64_t last_secs = INT64_MIN;
    static __thread char last_prefix[20]; /* "YYYY-MM-DDTHH:MM:SS." */
    if (secs != last_secs || len < 28) {
        /* Calendar arithmetic, not gmtime_r: UTC needs no time zone. */
        int64_t days = secs / 86400;
        int64_t sod = secs % 86400;
        if (sod < 0) {
            sod += 86400;
            days -= 1;
        }
        int64_t year;
        unsigned mon, mday;
        civil_from_days(days, &year, &mon, &mday);
        int hour = (int) (sod / 3600), min = (int) (sod / 60 % 60), sec = (int) (sod % 60);
        if (year < 0 || year > 9999 || len < 28) {
            snprintf(buf, len, "%04lld-%02u-%02uT%02d:%02d:%02d.%06dZ", (long long) year, mon,
                     mday, hour, min, sec, (int) frac);
            return;
        }
        const int fields[] = {(int) year, (int) mon, (int) mday, hour, min, sec};
        const int widths[] = {4, 2, 2, 2, 2, 2};
        const char seps[] = "--T::.";
        char *p = last_prefix;
        for (int i = 0; i < 6; i++) {
            int v = fields[i];
            for (int d = widths[i] - 1; d >= 0; d--) {
                p[d] = (char) ('0' + v % 10);
                v /= 10;
            }
            p += widths[i];
            *p++ = seps[i];
        }
        last_secs = secs;
    }
    memcpy(buf, last_prefix, sizeof last_prefix);
    int v = (int) frac;
    for (int d = 25; d >= 20; d--) {
        buf[d] = (char) ('0' + v % 10);
        v /= 10;
    }
    buf[26] = 'Z';
    buf[27] = '\0';
}

int mt_seconds_of_day(const char *tz, int64_t us)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    time_t t = (time_t) (us / 1000000);
    struct tm tm;
    if (!tz) {
        gmtime_r(&t, &tm);
        return tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
    }
    pthread_mutex_lock(&mu);
    const char *old = getenv("TZ");
    char *saved = old ? strdup(old) : NULL;
    setenv("TZ", tz, 1);
    tzset();
    localtime_r(&t, &tm);
    if (saved) {
        setenv("TZ", saved, 1);
        free(saved);
    } else {
        unsetenv("TZ");
    }
    tzset();
    pthread_mutex_unlock(&mu);
    return tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
}

size_t mt_json_key_len(const char *key)
{
#if JANSSON_VERSION_HEX >= 0x020e00
    return json_object_iter_key_len(json_object_key_to_iter(key));
#else
    return strlen(key);
#endif
}

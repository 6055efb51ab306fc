/*
 * mt_util.h - small pure helpers: strict number, size and duration parsing,
 * RFC 3339 times, the clock, and byte order. No allocation, no global state
 * (the clock reads the OS). Thread-safe.
 */
#ifndef MT_UTIL_H
#define MT_UTIL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_err.h"

/* Microseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t mt_now_us(void);
/*
 * The length (1 to 4) of the UTF-8 character that starts the n bytes at s,
 * strict as jansson checks it (no overlong forms, surrogates or values past
 * U+10FFFF; NUL is a character); 0 if they do not start with one.
 */
size_t mt_utf8_len(const char *s, size_t n);

/* Whether the n bytes at s are UTF-8 throughout (mt_utf8_len). */
bool mt_utf8_valid(const char *s, size_t n);

/* Monotonic microseconds, for durations and deadlines. */
int64_t mt_mono_us(void);

/* fsyncs directory 'dir', so that a name made or renamed in it is durable. */
bool mt_sync_dir(const char *dir);

/*
 * Parses a whole decimal string into *out (0 on error). Rejects signs, spaces,
 * empty strings, trailing bytes and overflow: MT_EINVAL.
 */
mt_err mt_parse_u64(const char *s, uint64_t *out);

/* Like mt_parse_u64 but allows a leading '-'; range is int64. */
mt_err mt_parse_i64(const char *s, int64_t *out);

/*
 * Parses a size: a whole number with an optional unit B, KiB, MiB, GiB, TiB
 * (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. "1GiB", "512".
 * Sets *bytes (0 on error). MT_EINVAL on anything else or overflow.
 */
mt_err mt_parse_size(const char *s, uint64_t *bytes);

/*
 * Parses a duration: a whole number with a unit ms, s, m, h or d
 * (e.g. "200ms", "30s"). Sets *ms (0 on error). MT_EINVAL on a missing unit,
 * anything else or overflow.
 */
mt_err mt_parse_duration(const char *s, uint64_t *ms);

/*
 * Parses an RFC 3339 timestamp ("2026-01-02T03:04:05.123456Z", offsets
 * allowed, fractional seconds optional, up to 9 digits) into microseconds
 * since the epoch. MT_EINVAL on anything else, including impossible dates.
 */
mt_err mt_time_parse(const char *s, int64_t *us);

/*
 * Seconds after local midnight at 'us' in time zone 'tz' (an IANA name;
 * NULL = UTC). Switches the process's TZ for the conversion, under a lock:
 * only call it from the loop thread, where nothing else converts local time.
 */
int mt_seconds_of_day(const char *tz, int64_t us);

/* Formats 'us' as RFC 3339 UTC with microseconds. buf needs 32 bytes. */
void mt_time_format_us(int64_t us, char *buf, size_t len);

static inline void mt_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) (v >> 24);
    p[1] = (uint8_t) (v >> 16);
    p[2] = (uint8_t) (v >> 8);
    p[3] = (uint8_t) v;
}

static inline uint32_t mt_get_be32(const uint8_t *p)
{
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

static inline void mt_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t) v;
        v >>= 8;
    }
}

static inline uint64_t mt_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/*
 * The length of 'key', a key json_object_foreach gave: keys may hold NUL
 * bytes, and jansson 2.14 tells their length; before it, none could.
 */
size_t mt_json_key_len(const char *key);

#endif

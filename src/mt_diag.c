#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mt_diag.h"
#include "mt_util.h"

static atomic_int min_level = MT_DIAG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void mt_diag_set_level(mt_diag_level level)
{
    atomic_store(&min_level, (int) level);
}

int mt_diag_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

size_t mt_diag_cut_at(const char *s, size_t n, size_t max)
{
    if (n <= max) {
        return n;
    }
    size_t keep = max;
    while (keep > 0 && ((unsigned char) s[keep] & 0xC0) == 0x80) {
        keep--; /* s[keep], the first byte cut, continues a character */
    }
    return keep;
}

json_t *mt_diag_text(const char *s, size_t n)
{
    json_t *v = memchr(s, 0, n) ? NULL : json_stringn(s, n);
    if (v) {
        return v;
    }
    char *out = malloc(3 * n + 1); /* a byte becomes at most the 3 of U+FFFD */
    if (!out) {
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = s[i] ? mt_utf8_len(s + i, n - i) : 0; /* NUL too: C strings downstream */
        if (len) {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    v = json_stringn(out, o);
    free(out);
    return v;
}

void mt_diag_emit(mt_diag_level level, const char *const *fields, const char *fmt, ...)
{
    if ((int) level < atomic_load(&min_level)) {
        return;
    }
    /* Most lines fit the stack; a handler's may not (mt_fx cuts those at 16 KiB). */
    char small[2048], *msg = small;
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int len = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (len >= (int) sizeof small) {
        msg = malloc((size_t) len + 1);
        if (msg) {
            vsnprintf(msg, (size_t) len + 1, fmt, again);
        } else {
            msg = small; /* cut, and perhaps not UTF-8 then: said so below */
        }
    }
    va_end(again);

    char ts[40];
    mt_time_format_us(mt_now_us(), ts, sizeof ts);
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[level]));
    /* msg may carry bytes from outside that are not UTF-8: keep the rest visible. */
    json_t *m = mt_diag_text(msg, strlen(msg));
    json_object_set_new(o, "msg", m);
    if (msg != small) {
        free(msg);
    }
    for (; fields && fields[0] && fields[1]; fields += 2) {
        json_t *v = json_string(fields[1]);
        if (v) {
            json_object_set_new(o, fields[0], v);
        }
    }
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (line) {
        size_t n = strlen(line);
        line[n] = '\n';
        ssize_t w = write(STDERR_FILENO, line, n + 1);
        (void) w;
        free(line);
    }
}

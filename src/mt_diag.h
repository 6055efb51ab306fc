/*
 * mt_diag.h - diagnostics: structured logs, one JSON object a line on stderr.
 *
 * "log" in moontide always means the event log; operator-facing messages
 * are diagnostics. Each line carries "ts", "level", "msg" and optional
 * string fields. Thread-safe: a line is written with one write(2).
 */
#ifndef MT_DIAG_H
#define MT_DIAG_H
#include <jansson.h>
#include <stddef.h>

typedef enum mt_diag_level {
    MT_DIAG_DEBUG = 0,
    MT_DIAG_INFO,
    MT_DIAG_WARN,
    MT_DIAG_ERROR
} mt_diag_level;

/* Lines below 'level' are dropped. The default is MT_DIAG_INFO. */
void mt_diag_set_level(mt_diag_level level);

/* Parses "debug", "info", "warn", "error"; returns -1 for anything else. */
int mt_diag_level_parse(const char *s);

/*
 * Emits one line. 'fields' is NULL or a NULL-terminated list of key, value
 * string pairs added to the object (e.g. {"subscription", "orders", NULL}).
 */
void mt_diag_emit(mt_diag_level level, const char *const *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * The n bytes at s as a JSON string for a message that came from outside
 * (a handler's error, a log line): each byte that is not part of valid
 * UTF-8, and each NUL (which C strings downstream would stop at), becomes
 * U+FFFD, so the rest stays readable. NULL only when out of memory.
 */
json_t *mt_diag_text(const char *s, size_t n);

/*
 * How many of the n bytes at s to keep to show at most max of them
 * without cutting a UTF-8 character: n if n <= max.
 */
size_t mt_diag_cut_at(const char *s, size_t n, size_t max);

#define mt_debug(...) do { mt_diag_emit(MT_DIAG_DEBUG, NULL, __VA_ARGS__); } while (0)
#define mt_info(...) do { mt_diag_emit(MT_DIAG_INFO, NULL, __VA_ARGS__); } while (0)
#define mt_warn(...) do { mt_diag_emit(MT_DIAG_WARN, NULL, __VA_ARGS__); } while (0)
#define mt_error(...) do { mt_diag_emit(MT_DIAG_ERROR, NULL, __VA_ARGS__); } while (0)

#endif

/*
 * mt_mem.h - allocation wrappers.
 *
 * mt_x* abort on exhaustion: for internal bookkeeping whose size the engine
 * controls. mt_try* return NULL (callers map it to MT_ENOMEM): for sizes that
 * come from outside (payloads, configuration). Tests can make the Nth
 * mt_try* allocation fail with mt_mem_fail_after(). Thread-safe.
 */
#ifndef MT_MEM_H
#define MT_MEM_H
#include <stddef.h>
#include <stdint.h>

void *mt_xmalloc(size_t n);
void *mt_xcalloc(size_t count, size_t n);
void *mt_xrealloc(void *p, size_t n);
char *mt_xstrdup(const char *s);
char *mt_xstrndup(const char *s, size_t n);
/* printf into a new string; aborts on exhaustion. */
char *mt_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void *mt_trymalloc(size_t n);
void *mt_tryrealloc(void *p, size_t n);

/* Test hook: the n-th following mt_try* call fails (n = 1: the next one); 0 disables. */
void mt_mem_fail_after(long n);

/*
 * A growable byte buffer. mt_buf_init zeroes it; mt_buf_free releases it.
 * Appends abort on exhaustion (the engine bounds every input before it gets here).
 */
typedef struct mt_buf {
    char *data;
    size_t len;
    size_t cap;
} mt_buf;

void mt_buf_init(mt_buf *b);
void mt_buf_free(mt_buf *b);
void mt_buf_reserve(mt_buf *b, size_t extra);
void mt_buf_add(mt_buf *b, const void *p, size_t n);
void mt_buf_adds(mt_buf *b, const char *s);
void mt_buf_addf(mt_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends 'v' in decimal. */
void mt_buf_add_u64(mt_buf *b, uint64_t v);
/* Ensures data is NUL-terminated (not counted in len) and returns it. */
const char *mt_buf_cstr(mt_buf *b);

#endif

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_err.h"
#include "mt_mem.h"

static atomic_long fail_countdown;

static void oom(size_t n)
{
    fprintf(stderr, "moontide: out of memory allocating %zu bytes\n", n);
    abort();
}

void *mt_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        oom(n);
    }
    return p;
}

void *mt_xcalloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p) {
        oom(count * n);
    }
    return p;
}

void *mt_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        oom(n);
    }
    return q;
}

char *mt_xstrdup(const char *s)
{
    return mt_xstrndup(s, strlen(s));
}

char *mt_xstrndup(const char *s, size_t n)
{
    char *p = mt_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *mt_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        oom(0);
    }
    return s;
}

static int should_fail(void)
{
    if (atomic_load(&fail_countdown) <= 0) {
        return 0;
    }
    return atomic_fetch_sub(&fail_countdown, 1) == 1;
}

void *mt_trymalloc(size_t n)
{
    return should_fail() ? NULL : malloc(n ? n : 1);
}

void *mt_tryrealloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n ? n : 1);
}

void mt_mem_fail_after(long n)
{
    atomic_store(&fail_countdown, n);
}

void mt_buf_init(mt_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void mt_buf_free(mt_buf *b)
{
    free(b->data);
    mt_buf_init(b);
}

void mt_buf_reserve(mt_buf *b, size_t extra)
{
    mt_assert(b->len + extra >= b->len);
    if (b->len + extra + 1 <= b->cap) {
        return;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        cap *= 2;
    }
    b->data = mt_xrealloc(b->data, cap);
    b->cap = cap;
}

void mt_buf_add(mt_buf *b, const void *p, size_t n)
{
    mt_buf_reserve(b, n);
    if (n) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
}

void mt_buf_adds(mt_buf *b, const char *s)
{
    mt_buf_add(b, s, strlen(s));
}

void mt_buf_addf(mt_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    mt_assert(n >= 0);
    mt_buf_reserve(b, (size_t) n);
    vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t) n;
}

void mt_buf_add_u64(mt_buf *b, uint64_t v)
{
    char d[20];
    size_t n = 0;
    do {
        d[sizeof d - 1 - n++] = (char) ('0' + v % 10);
        v /= 10;
    } while (v);
    mt_buf_add(b, d + sizeof d - n, n);
}

const char *mt_buf_cstr(mt_buf *b)
{
    mt_buf_reserve(b, 0);
    b->data[b->len] = '\0';
    return b->data;
}

/*
 * mt_datacache.c - events' JSON data, parsed, kept per thread
 * (mt_datacache.h). Subscriptions that are behind can be thousands of
 * events apart: with 4,096 slots, four kv subscriptions at 25,000 events/s
 * parsed most events more than once and fell behind; with 16,384 they keep
 * close to pace.
 */
#include "mt_datacache.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DATA_CACHE_SLOTS 16384
#define DATA_CACHE_TEXT_MAX 2048
#define DATA_CACHE_BYTES (8u << 20)
#define LET_GO_BATCH 256      /* values a thread hands back at once */
#define LET_GO_MAX 16384      /* held back at most: past it, a thread frees its own */

typedef struct data_entry {
    uint64_t sequence;
    size_t len;
    char *text;                /* owned: len bytes */
    json_t *value;             /* owned reference; NULL = empty slot */
    bool foreign;              /* the value is another thread's memory */
} data_entry;

typedef struct data_cache {
    size_t bytes;              /* text held */
    int let_go_n;
    json_t *let_go[LET_GO_BATCH]; /* foreign values let go, not yet handed back */
    data_entry slot[DATA_CACHE_SLOTS];
} data_cache;

/*
 * The foreign values the caches have let go, for mt_datacache_reap: a
 * list of arrays of LET_GO_BATCH, under a mutex taken once per array.
 */
typedef struct let_go_batch {
    struct let_go_batch *next;
    int n;
    json_t *v[LET_GO_BATCH];
} let_go_batch;

static pthread_mutex_t let_go_mu = PTHREAD_MUTEX_INITIALIZER;
static let_go_batch *let_go_list;
static atomic_int let_go_held; /* values in let_go_list */

/* Hands the thread's let-go values to the reaper, or frees them if it is far behind. */
static void let_go_flush(data_cache *c)
{
    if (c->let_go_n == 0) {
        return;
    }
    let_go_batch *b = NULL;
    if (atomic_load_explicit(&let_go_held, memory_order_relaxed) + c->let_go_n <= LET_GO_MAX) {
        b = malloc(sizeof *b);
    }
    if (!b) {
        for (int i = 0; i < c->let_go_n; i++) {
            json_decref(c->let_go[i]);
        }
        c->let_go_n = 0;
        return;
    }
    b->n = c->let_go_n;
    memcpy(b->v, c->let_go, (size_t) b->n * sizeof b->v[0]);
    c->let_go_n = 0;
    /* Counted before it is published: once unlocked, the reaper may free it. */
    atomic_fetch_add_explicit(&let_go_held, b->n, memory_order_relaxed);
    pthread_mutex_lock(&let_go_mu);
    b->next = let_go_list;
    let_go_list = b;
    pthread_mutex_unlock(&let_go_mu);
}

static pthread_key_t data_cache_key;
static pthread_once_t data_cache_once = PTHREAD_ONCE_INIT;

/*
 * Lets go of a reference to a foreign value: the last one goes back to be
 * freed by the reaper; another is dropped here (every other reference to a
 * given value is this thread's, so reading the count races with nothing).
 */
static void let_go(data_cache *c, json_t *v)
{
    if (v->refcount > 1) {
        json_decref(v);
        return;
    }
    c->let_go[c->let_go_n++] = v;
    if (c->let_go_n == LET_GO_BATCH) {
        let_go_flush(c);
    }
}

static void data_entry_clear(data_cache *c, data_entry *d)
{
    if (d->value && d->foreign) {
        let_go(c, d->value);
    } else {
        json_decref(d->value);
    }
    free(d->text);
    c->bytes -= d->len;
    memset(d, 0, sizeof *d);
}

/* Frees a thread's cache when the thread ends. */
static void data_cache_free(void *p)
{
    data_cache *c = p;
    for (int i = 0; i < DATA_CACHE_SLOTS; i++) {
        data_entry_clear(c, &c->slot[i]);
    }
    let_go_flush(c);
    free(c);
}

static void data_cache_key_make(void)
{
    if (pthread_key_create(&data_cache_key, data_cache_free) != 0) {
        abort();
    }
}

static data_cache *thread_data_cache(void)
{
    pthread_once(&data_cache_once, data_cache_key_make);
    data_cache *c = pthread_getspecific(data_cache_key);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (c && pthread_setspecific(data_cache_key, c) != 0) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

json_t *mt_datacache_get(uint64_t sequence, const char *text, size_t len)
{
    data_cache *c = sequence && len <= DATA_CACHE_TEXT_MAX ? thread_data_cache() : NULL;
    data_entry *d = c ? &c->slot[sequence % DATA_CACHE_SLOTS] : NULL;
    if (d && d->value && d->sequence == sequence && d->len == len &&
        memcmp(d->text, text, len) == 0) {
        return json_incref(d->value);
    }
    return NULL;
}

/* Keeps 'value' (a reference the caller gives) in its slot; false if it cannot. */
static bool keep(data_cache *c, uint64_t sequence, const char *text, size_t len, json_t *value,
                 bool foreign)
{
    data_entry *d = &c->slot[sequence % DATA_CACHE_SLOTS];
    data_entry_clear(c, d);
    if (c->bytes + len > DATA_CACHE_BYTES || (d->text = malloc(len ? len : 1)) == NULL) {
        return false;
    }
    memcpy(d->text, text, len);
    d->sequence = sequence;
    d->len = len;
    d->value = value;
    d->foreign = foreign;
    c->bytes += len;
    return true;
}

void mt_datacache_put(uint64_t sequence, const char *text, size_t len, json_t *value)
{
    data_cache *c = sequence && len <= DATA_CACHE_TEXT_MAX ? thread_data_cache() : NULL;
    if (c && !keep(c, sequence, text, len, json_incref(value), false)) {
        json_decref(value);
    }
}

void mt_datacache_give(uint64_t sequence, const char *text, size_t len, json_t *value)
{
    data_cache *c = thread_data_cache();
    if (!c) {
        json_decref(value); /* no cache (out of memory): the one reference is this thread's */
        return;
    }
    if (!sequence || len > DATA_CACHE_TEXT_MAX || !keep(c, sequence, text, len, value, true)) {
        let_go(c, value);
    }
}

size_t mt_datacache_waiting(void)
{
    return (size_t) atomic_load_explicit(&let_go_held, memory_order_relaxed);
}

void mt_datacache_reap(void)
{
    if (atomic_load_explicit(&let_go_held, memory_order_relaxed) == 0) {
        return;
    }
    pthread_mutex_lock(&let_go_mu);
    let_go_batch *b = let_go_list;
    let_go_list = NULL;
    pthread_mutex_unlock(&let_go_mu);
    while (b) {
        let_go_batch *next = b->next;
        atomic_fetch_sub_explicit(&let_go_held, b->n, memory_order_relaxed);
        for (int i = 0; i < b->n; i++) {
            json_decref(b->v[i]);
        }
        free(b);
        b = next;
    }
}

static atomic_int users;

void mt_datacache_use(int delta)
{
    atomic_fetch_add_explicit(&users, delta, memory_order_relaxed);
}

bool mt_datacache_used(void)
{
    return atomic_load_explicit(&users, memory_order_relaxed) > 0;
}

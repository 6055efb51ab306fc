#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "mt_datacache.h"
#include "mt_diag.h"
#include "mt_log.h"
#include "mt_util.h"

mt_err mt_log_parse_expect(const char *s, mt_expect *out)
{
    out->kind = MT_EXPECT_ANY;
    out->version = 0;
    if (!s) {
        return MT_EINVAL;
    }
    if (strcmp(s, "any") == 0) {
        return MT_OK;
    }
    if (strcmp(s, "no_stream") == 0) {
        out->kind = MT_EXPECT_NO_STREAM;
        return MT_OK;
    }
    if (strcmp(s, "exists") == 0) {
        out->kind = MT_EXPECT_EXISTS;
        return MT_OK;
    }
    if (mt_parse_u64(s, &out->version)) {
        return MT_EINVAL;
    }
    out->kind = MT_EXPECT_VERSION;
    return MT_OK;
}

/* Key of the stream index: subject, NUL, big-endian version. */
static size_t stream_key(uint8_t *k, const char *subject, uint64_t version)
{
    size_t n = strlen(subject);
    memcpy(k, subject, n);
    k[n] = 0;
    mt_put_be64(k + n + 1, version);
    return n + 9;
}

/* Key of the id index: source, NUL, id. */
static size_t id_key(uint8_t *k, const char *source, const char *id)
{
    size_t a = strlen(source), b = strlen(id);
    memcpy(k, source, a);
    k[a] = 0;
    memcpy(k + a + 1, id, b);
    return a + 1 + b;
}

/*
 * Reads the 'n' big-endian u64s of meta key 'key' (named 'what' in the
 * log); *present false, and zeros, when the key is absent.
 */
static mt_err meta_get(mt_txn *t, const char *key, const char *what, uint64_t *out, size_t n,
                       bool *present)
{
    *present = false;
    memset(out, 0, n * sizeof *out);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_META, key, strlen(key), &v, &vl);
    if (rc == MT_ENOTFOUND) {
        return MT_OK;
    }
    if (rc) {
        return rc;
    }
    if (vl != 8 * n) {
        mt_error("log: the stream index %s is %zu bytes, not %zu", what, vl, 8 * n);
        return MT_EIO;
    }
    *present = true;
    for (size_t i = 0; i < n; i++) {
        out[i] = mt_get_be64((const uint8_t *) v + 8 * i);
    }
    return MT_OK;
}

static mt_err meta_put(mt_txn *t, const char *key, const uint64_t *in, size_t n)
{
    uint8_t v[16];
    mt_assert(n <= 2);
    for (size_t i = 0; i < n; i++) {
        mt_put_be64(v + 8 * i, in[i]);
    }
    return mt_store_put(t, MT_DB_META, key, strlen(key), v, 8 * n, 0);
}

/* The stream index's mark; *present false in a store without one. */
static mt_err indexed_get(mt_txn *t, bool *present, uint64_t *seq)
{
    return meta_get(t, MT_LOG_INDEXED_KEY, "mark", seq, 1, present);
}

static mt_err indexed_put(mt_txn *t, uint64_t seq)
{
    return meta_put(t, MT_LOG_INDEXED_KEY, &seq, 1);
}

mt_err mt_log_head(mt_txn *t, uint64_t *seq)
{
    *seq = 0;
    mt_cursor *c;
    mt_err rc = mt_store_cursor_open(t, MT_DB_LOG, &c);
    if (rc) {
        return rc;
    }
    const void *k, *v;
    size_t kl, vl;
    rc = mt_store_cursor_last(c, &k, &kl, &v, &vl);
    mt_store_cursor_close(c);
    if (rc == MT_ENOTFOUND) {
        return MT_OK;
    }
    if (rc == MT_OK && kl == 8) {
        *seq = mt_get_be64(k);
    }
    return rc;
}

/*
 * Opens *c on the log at the first event with sequence >= from and sets
 * the out-params as a cursor move does: MT_ENOTFOUND past the end (*c is
 * open then too, and always the caller's to close; NULL on MT_EIO).
 */
static mt_err log_cursor_at(mt_txn *t, uint64_t from, mt_cursor **c, const void **k, size_t *kl,
                            const void **v, size_t *vl)
{
    mt_err rc = mt_store_cursor_open(t, MT_DB_LOG, c);
    if (rc) {
        return rc;
    }
    uint8_t start[8];
    mt_put_be64(start, from);
    return mt_store_cursor_seek(*c, start, 8, k, kl, v, vl);
}

/* What a lookup of a subject's head (rc, its value) says: *exists, *version. */
static mt_err head_value(mt_err rc, const void *v, size_t vl, bool *exists, uint64_t *version)
{
    *exists = false;
    *version = 0;
    if (rc == MT_ENOTFOUND) {
        return MT_OK;
    }
    if (rc) {
        return rc;
    }
    if (vl != 8) {
        return MT_EIO;
    }
    *exists = true;
    *version = mt_get_be64(v);
    return MT_OK;
}

mt_err mt_log_stream_head(mt_txn *t, const char *subject, bool *exists, uint64_t *version)
{
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_HEADS, subject, strlen(subject), &v, &vl);
    return head_value(rc, v, vl, exists, version);
}

mt_err mt_log_find_id(mt_txn *t, const char *source, const char *id, uint64_t *seq)
{
    *seq = 0;
    uint8_t key[MT_EVENT_MAX_SOURCE + MT_EVENT_MAX_ID + 2];
    if (strlen(source) > MT_EVENT_MAX_SOURCE || strlen(id) > MT_EVENT_MAX_ID) {
        return MT_ENOTFOUND; /* no such event can be stored */
    }
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_IDS, key, id_key(key, source, id), &v, &vl);
    if (rc == MT_OK) {
        if (vl != 8) {
            return MT_EIO;
        }
        *seq = mt_get_be64(v);
    }
    return rc;
}

mt_err mt_log_get(mt_txn *t, uint64_t seq, mt_event *ev)
{
    mt_event_init(ev);
    uint8_t k[8];
    mt_put_be64(k, seq);
    const void *v;
    size_t vl;
    mt_err rc = mt_store_get(t, MT_DB_LOG, k, 8, &v, &vl);
    if (rc) {
        return rc;
    }
    if (mt_event_decode(v, vl, ev)) {
        mt_error("log: record at sequence %llu is corrupt", (unsigned long long) seq);
        return MT_EIO;
    }
    return MT_OK;
}

/* ---- the stream index, brought up to date in slices ---- */

/*
 * The window being indexed, while it is: meta key, value 'to' then the
 * entries already indexed (u64 BE each). The window is (mark, to].
 */
#define WINDOW_KEY "log.streams.window"

static mt_err window_get(mt_txn *t, bool *present, uint64_t *to, uint64_t *done)
{
    uint64_t w[2];
    mt_err rc = meta_get(t, WINDOW_KEY, "window", w, 2, present);
    *to = w[0];
    *done = w[1];
    return rc;
}

static mt_err window_put(mt_txn *t, uint64_t to, uint64_t done)
{
    uint64_t w[2] = {to, done};
    return meta_put(t, WINDOW_KEY, w, 2);
}

/*
 * The window's entries in key order, kept by the writer thread between
 * slices (per thread, and so per store: a store has one writer). They
 * depend on the log's records (from, to] alone, which do not change once
 * committed; a window whose start was undone is never found in the store
 * again, and each start makes them anew.
 */
typedef struct window_cache {
    uint64_t from, to;  /* the window (from, to]; to == 0: none */
    mt_buf buf;         /* entries: 2-byte key length, key, 8-byte sequence */
    size_t *off;        /* the entries' offsets in buf, in key order */
    size_t n, cap;
} window_cache;

static pthread_key_t window_key;
static pthread_once_t window_once = PTHREAD_ONCE_INIT;

static void window_cache_free(void *p)
{
    window_cache *w = p;
    mt_buf_free(&w->buf);
    free(w->off);
    free(w);
}

static void window_key_make(void)
{
    if (pthread_key_create(&window_key, window_cache_free) != 0) {
        abort();
    }
}

static window_cache *window_cache_get(void)
{
    pthread_once(&window_once, window_key_make);
    window_cache *w = pthread_getspecific(window_key);
    if (!w) {
        w = mt_xcalloc(1, sizeof *w);
        mt_buf_init(&w->buf);
        pthread_setspecific(window_key, w);
    }
    return w;
}

/* Orders two entries' offsets in 'buf' (the window's entries) by key. */
static int entry_cmp(const void *a, const void *b, void *buf)
{
    const uint8_t *x = (const uint8_t *) buf + *(const size_t *) a;
    const uint8_t *y = (const uint8_t *) buf + *(const size_t *) b;
    size_t xl = (size_t) x[0] << 8 | x[1], yl = (size_t) y[0] << 8 | y[1];
    int c = memcmp(x + 2, y + 2, xl < yl ? xl : yl);
    return c ? c : (xl > yl) - (xl < yl);
}

/* Reads the entries of the log's records (from, to] into w, in key order. */
static mt_err window_cache_fill(mt_txn *t, window_cache *w, uint64_t from, uint64_t to)
{
    w->from = w->to = 0;
    w->buf.len = 0;
    w->n = 0;
    mt_cursor *c;
    const void *k, *v;
    size_t kl, vl;
    mt_err rc = log_cursor_at(t, from + 1, &c, &k, &kl, &v, &vl);
    for (; rc == MT_OK && kl == 8 && mt_get_be64(k) <= to;
         rc = mt_store_cursor_next(c, &k, &kl, &v, &vl)) {
        const char *subject;
        uint64_t version;
        if (mt_event_record_subject(v, vl, &subject, &version) ||
            (subject && strlen(subject) > MT_EVENT_MAX_SUBJECT)) {
            mt_error("log: record at sequence %llu is corrupt",
                     (unsigned long long) mt_get_be64(k));
            rc = MT_EIO;
            break;
        }
        if (!subject) {
            continue;
        }
        uint8_t key[2 + MT_EVENT_MAX_SUBJECT + 16]; /* length, key */
        size_t n = stream_key(key + 2, subject, version);
        key[0] = (uint8_t) (n >> 8);
        key[1] = (uint8_t) n;
        if (w->n == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 4096;
            w->off = mt_xrealloc(w->off, w->cap * sizeof *w->off);
        }
        w->off[w->n++] = w->buf.len;
        mt_buf_add(&w->buf, key, 2 + n);
        mt_buf_add(&w->buf, k, 8);
    }
    mt_store_cursor_close(c);
    if (rc != MT_OK && rc != MT_ENOTFOUND) {
        return rc;
    }
    if (w->n > 0) { /* none when no event of the window has a subject */
        qsort_r(w->off, w->n, sizeof *w->off, entry_cmp, w->buf.data);
    }
    w->from = from;
    w->to = to;
    return MT_OK;
}

/*
 * One step of the stream index: indexes the next 'slice' entries of the
 * window (mark, to] in key order; or, when none is open, opens a window
 * up to the log's head 'head' (reading and sorting its entries, and with a
 * 'slice' of SIZE_MAX indexing them all); when the window is done, moves
 * the mark to its end. A subject's entries
 * in the window are indexed in version order, so the index holds each
 * subject's versions from 0 on without a gap wherever a slice ends, which
 * is all a stream read needs (mt_log_read_stream takes the rest from the
 * log beyond the mark).
 */
static mt_err index_step(mt_txn *t, uint64_t mark, uint64_t head, size_t slice)
{
    bool open;
    uint64_t to, done;
    mt_err rc = window_get(t, &open, &to, &done);
    if (rc) {
        return rc;
    }
    if (!open) {
        if (head <= mark) {
            return MT_OK;
        }
        to = head;
        done = 0;
    }
    window_cache *w = window_cache_get();
    if (!open || w->from != mark || w->to != to) {
        rc = window_cache_fill(t, w, mark, to);
        if (rc) {
            return rc;
        }
    }
    if (!open && slice != SIZE_MAX) {
        /* Reading and sorting the window is this append's share; the slices follow. */
        return window_put(t, to, 0);
    }
    if (done > w->n) {
        mt_error("log: the stream index window has %llu entries done of %zu",
                 (unsigned long long) done, w->n);
        return MT_EIO;
    }
    size_t end = w->n - done > slice ? (size_t) done + slice : w->n;
    for (size_t i = (size_t) done; i < end && rc == MT_OK; i++) {
        const uint8_t *p = (const uint8_t *) w->buf.data + w->off[i];
        size_t n = (size_t) p[0] << 8 | p[1];
        rc = mt_store_put(t, MT_DB_STREAMS, p + 2, n, p + 2 + n, 8, 0);
    }
    if (rc) {
        return rc;
    }
    if (end < w->n) {
        return window_put(t, to, end);
    }
    rc = indexed_put(t, to);
    if (rc == MT_OK && open) {
        rc = mt_store_del(t, MT_DB_META, WINDOW_KEY, strlen(WINDOW_KEY));
    }
    return rc;
}

/*
 * After an append: once MT_LOG_INDEX_EVERY events lie beyond the mark, a
 * window opens on them, and each append after that takes its next slice.
 * A window is open only while that many lie beyond the mark (it opens
 * there, and the mark stays until it closes), so the appends before need
 * not look for one. Past twice that, the open window is finished at once,
 * so that what a stream read walks stays bounded.
 */
static mt_err index_after_append(mt_txn *t, uint64_t mark, uint64_t head)
{
    if (head - mark < MT_LOG_INDEX_EVERY) {
        return MT_OK;
    }
    size_t slice = head - mark >= 2 * (uint64_t) MT_LOG_INDEX_EVERY ? SIZE_MAX : MT_LOG_INDEX_SLICE;
    return index_step(t, mark, head, slice);
}

mt_err mt_log_index_streams(mt_txn *t)
{
    bool marked;
    uint64_t mark, head;
    mt_err rc = indexed_get(t, &marked, &mark);
    if (rc == MT_OK) {
        rc = mt_log_head(t, &head);
    }
    if (rc || !marked || head <= mark) {
        return rc; /* without a mark, every event is indexed */
    }
    /* The open window to its end, then everything after it. */
    for (int round = 0; rc == MT_OK && round < 2; round++) {
        rc = index_step(t, mark, head, SIZE_MAX);
        if (rc == MT_OK) {
            rc = indexed_get(t, &marked, &mark);
        }
    }
    return rc;
}

static bool expect_holds(const mt_expect *e, bool exists, uint64_t version)
{
    switch (e->kind) {
    case MT_EXPECT_ANY: return true;
    case MT_EXPECT_NO_STREAM: return !exists;
    case MT_EXPECT_EXISTS: return exists;
    case MT_EXPECT_VERSION: return exists && version == e->version;
    }
    return false;
}

mt_err mt_log_append(mt_txn *t, mt_event_batch *b, const mt_expect *expect,
                     mt_log_result *results, int64_t *current)
{
    *current = -1;
    mt_expect any = {MT_EXPECT_ANY, 0};
    if (!expect) {
        expect = &any;
    }
    /* Decode every record once: the fields point into the batch's buffer. */
    mt_event *evs = mt_xcalloc((size_t) b->count, sizeof *evs);
    mt_err rc = MT_OK;
    for (int i = 0; i < b->count && rc == MT_OK; i++) {
        rc = mt_event_decode(b->buf.data + b->off[i], b->len[i], &evs[i]);
        mt_assert(rc == MT_OK); /* the batch was built by mt_event_batch_add */
        if (expect->kind != MT_EXPECT_ANY &&
            (!evs[i].attr[MT_ATTR_SUBJECT] ||
             strcmp(evs[i].attr[MT_ATTR_SUBJECT], evs[0].attr[MT_ATTR_SUBJECT]) != 0)) {
            rc = MT_EINVAL;
        }
    }
    uint64_t seq = 0, indexed = 0;
    bool marked = false;
    if (rc == MT_OK) {
        rc = mt_log_head(t, &seq);
    }
    if (rc == MT_OK) {
        rc = indexed_get(t, &marked, &indexed);
    }
    if (rc == MT_OK && !marked) {
        indexed = seq; /* a store of before: everything in it is indexed */
        rc = indexed_put(t, seq);
    }
    bool checked = false;
    int64_t now = mt_now_us();
    uint8_t key[1024];
    /*
     * One search per index where a lookup and a write would take two: the
     * id's entry is written unless it is there (a duplicate), and the
     * subject's head is replaced where the cursor found it.
     */
    mt_cursor *heads = NULL;
    if (rc == MT_OK) {
        rc = mt_store_cursor_open(t, MT_DB_HEADS, &heads);
    }
    for (int i = 0; i < b->count && rc == MT_OK; i++) {
        mt_event *ev = &evs[i];
        mt_log_result *r = &results[i];
        memset(r, 0, sizeof *r);
        const char *subject = ev->attr[MT_ATTR_SUBJECT];
        r->has_subject = subject != NULL;

        size_t kl = id_key(key, ev->attr[MT_ATTR_SOURCE], ev->attr[MT_ATTR_ID]);
        uint8_t seqk[8];
        mt_put_be64(seqk, seq + 1);
        const void *v;
        size_t vl;
        rc = mt_store_put_new(t, MT_DB_IDS, key, kl, seqk, 8, &v, &vl);
        if (rc == MT_EEXISTS) {
            mt_event orig;
            r->duplicate = true;
            r->sequence = vl == 8 ? mt_get_be64(v) : 0;
            rc = mt_log_get(t, r->sequence, &orig);
            r->streamversion = orig.streamversion;
            r->has_subject = orig.attr[MT_ATTR_SUBJECT] != NULL;
            continue;
        }
        if (rc) {
            break;
        }

        bool exists = false;
        uint64_t head = 0;
        size_t sl = subject ? strlen(subject) : 0;
        if (subject) {
            rc = mt_store_cursor_find(heads, subject, sl, &v, &vl);
            rc = head_value(rc, v, vl, &exists, &head);
            if (rc) {
                break;
            }
        }
        if (!checked) {
            checked = true;
            if (!expect_holds(expect, exists, head)) {
                *current = exists ? (int64_t) head : -1;
                /* The id's entry goes again: a caller may go on with the transaction. */
                mt_err del = mt_store_del(t, MT_DB_IDS, key, kl);
                rc = del ? del : MT_ECONFLICT;
                break;
            }
        }
        seq++;
        uint64_t version = exists ? head + 1 : 0;
        uint8_t *rec = (uint8_t *) b->buf.data + b->off[i];
        mt_event_record_set_position(rec, seq, subject ? version : 0, now);
        rc = mt_store_put(t, MT_DB_LOG, seqk, 8, rec, b->len[i], MT_STORE_APPEND);
        if (rc == MT_OK && subject) {
            uint8_t vb[8];
            mt_put_be64(vb, version);
            rc = mt_store_cursor_put(heads, subject, sl, vb, 8, exists ? MT_STORE_CURRENT : 0);
        }
        if (rc == MT_OK && b->data[i] && mt_datacache_used()) {
            /*
             * The data parsed on publish: handlers on this thread need not
             * parse it again. Unless this thread parsed it, the batch's
             * reference goes to the cache: the value is the publishing
             * thread's memory, handed back to it to free (mt_datacache.h).
             */
            if (b->data_local) {
                mt_datacache_put(seq, (const char *) ev->data, ev->data_len, b->data[i]);
            } else {
                mt_datacache_give(seq, (const char *) ev->data, ev->data_len, b->data[i]);
                b->data[i] = NULL;
            }
        }
        r->sequence = seq;
        r->streamversion = version;
    }
    mt_store_cursor_close(heads);
    free(evs);
    if (rc == MT_OK) {
        rc = index_after_append(t, indexed, seq);
    }
    return rc;
}

static int visit_record(const void *v, size_t vl, uint64_t seq, mt_log_visit_fn visit, void *arg)
{
    mt_event ev;
    if (mt_event_decode(v, vl, &ev)) {
        mt_error("log: record at sequence %llu is corrupt", (unsigned long long) seq);
        return -1;
    }
    return visit(&ev, arg);
}

/* Ends a walk of the log: closes its cursor; what a read returns (-1 on a store error). */
static int walk_end(mt_cursor *c, mt_err rc, int stop)
{
    mt_store_cursor_close(c);
    return rc != MT_OK && rc != MT_ENOTFOUND ? -1 : stop;
}

int mt_log_read(mt_txn *t, uint64_t after, uint64_t limit, mt_log_visit_fn visit, void *arg)
{
    if (after == UINT64_MAX || limit == 0) {
        return 0;
    }
    mt_cursor *c;
    const void *k, *v;
    size_t kl, vl;
    int stop = 0;
    mt_err rc = log_cursor_at(t, after + 1, &c, &k, &kl, &v, &vl);
    for (uint64_t n = 0; rc == MT_OK && n < limit && stop == 0; n++) {
        stop = visit_record(v, vl, kl == 8 ? mt_get_be64(k) : 0, visit, arg);
        if (stop == 0) {
            rc = mt_store_cursor_next(c, &k, &kl, &v, &vl);
        }
    }
    return walk_end(c, rc, stop);
}

/*
 * The part of a stream read beyond the index's mark: the subject's events
 * there with streamversion >= from, from the log. The index holds each
 * subject's versions from 0 on without a gap, so 'from' past what it gave
 * (or the caller's, if it gave none) and the head say whether there are
 * any: a subject not written since the mark costs no walk.
 */
static int read_stream_tail(mt_txn *t, const char *subject, uint64_t from, uint64_t limit,
                            mt_log_visit_fn visit, void *arg)
{
    bool marked, exists;
    uint64_t indexed, last;
    if (indexed_get(t, &marked, &indexed) || mt_log_stream_head(t, subject, &exists, &last)) {
        return -1;
    }
    if (!marked || !exists || last < from) {
        return 0;
    }
    mt_cursor *c;
    const void *k, *v;
    size_t kl, vl;
    int stop = 0;
    uint64_t n = 0;
    mt_err rc = log_cursor_at(t, indexed + 1, &c, &k, &kl, &v, &vl);
    while (rc == MT_OK && n < limit && stop == 0) {
        const char *s;
        uint64_t version;
        mt_event ev;
        if (mt_event_record_subject(v, vl, &s, &version) ||
            (s && strcmp(s, subject) == 0 && mt_event_decode(v, vl, &ev))) {
            mt_error("log: record at sequence %llu is corrupt",
                     (unsigned long long) (kl == 8 ? mt_get_be64(k) : 0));
            stop = -1;
            break;
        }
        if (s && version >= from && strcmp(s, subject) == 0) {
            stop = visit(&ev, arg);
            n++;
            if (version == last) {
                break; /* the subject's head: nothing of it further on */
            }
        }
        if (stop == 0) {
            rc = mt_store_cursor_next(c, &k, &kl, &v, &vl);
        }
    }
    return walk_end(c, rc, stop);
}

int mt_log_read_stream(mt_txn *t, const char *subject, uint64_t from, uint64_t limit,
                       mt_log_visit_fn visit, void *arg)
{
    size_t sn = strlen(subject);
    if (sn > MT_EVENT_MAX_SUBJECT || limit == 0) {
        return 0;
    }
    mt_cursor *c;
    if (mt_store_cursor_open(t, MT_DB_STREAMS, &c)) {
        return -1;
    }
    uint8_t start[MT_EVENT_MAX_SUBJECT + 16];
    size_t sl = stream_key(start, subject, from);
    const void *k, *v;
    size_t kl, vl;
    int stop = 0;
    uint64_t n = 0, next = from; /* the first version the index did not give */
    mt_err rc = mt_store_cursor_seek(c, start, sl, &k, &kl, &v, &vl);
    for (; rc == MT_OK && n < limit && stop == 0; n++) {
        /* Stop at the first key of another subject. */
        if (kl != sn + 9 || memcmp(k, subject, sn + 1) != 0 || vl != 8) {
            break;
        }
        next = mt_get_be64((const uint8_t *) k + sn + 1) + 1;
        mt_event ev;
        uint64_t seq = mt_get_be64(v);
        rc = mt_log_get(t, seq, &ev);
        if (rc) {
            stop = -1;
            break;
        }
        stop = visit(&ev, arg);
        if (stop == 0) {
            rc = mt_store_cursor_next(c, &k, &kl, &v, &vl);
        }
    }
    stop = walk_end(c, rc, stop);
    if (stop || n == limit) {
        return stop;
    }
    return read_stream_tail(t, subject, next, limit - n, visit, arg);
}

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_diag.h"
#include "mt_fx.h"
#include "mt_log.h"
#include "mt_mem.h"
#include "mt_util.h"

static void log_line(mt_fx *fx, mt_diag_level level, const char *msg);

/* Binds 'fx' to a transaction (record mode: a snapshot) and a trigger. */
static void fx_init(mt_fx *fx, mt_txn *txn, const char *sub, const mt_event *trigger)
{
    memset(fx, 0, sizeof *fx);
    fx->txn = txn;
    fx->sub = sub;
    fx->trigger = trigger;
}

/* ---- record mode ---- */

/* kv keys ("table NUL key") map to their JSON text as a string, or null for deleted. */
struct mt_fx_overlay {
    json_t *kv;
};

/*
 * A kv write waiting in buffered mode: key ("table NUL key") and value in
 * one block; 'deleted' for a delete.
 */
typedef struct pending {
    char *block;              /* owned: kl bytes of key, then vl of value */
    size_t kl, vl;
    bool deleted;
} pending;

#define PENDING_MAX 64        /* past this many keys, buffered writes go to 'writes' */

struct mt_fx_rec {
    mt_fx_overlay *ov;        /* borrowed; NULL in buffered mode */
    json_t *reads;            /* key -> the value read (string) or null (absent) */
    json_t *writes;           /* key -> the value written (string) or null (deleted);
                               * buffered mode: NULL while 'pend' holds them */
    json_t *logs;             /* [[level, message], ...] */
    pending *pend;            /* buffered mode: the writes, in the order first made */
    int npend, cap;
    size_t written;           /* bytes of keys and values written so far (MT_FX_MAX_WRITTEN) */
    bool replay_impossible;
};

struct mt_fx_effects {
    json_t *reads, *writes, *logs;
    size_t written;           /* the recording's 'written' */
};

mt_fx_overlay *mt_fx_overlay_new(void)
{
    mt_fx_overlay *ov = mt_xmalloc(sizeof *ov);
    ov->kv = json_object();
    return ov;
}

size_t mt_fx_overlay_size(const mt_fx_overlay *ov)
{
    return ov ? json_object_size(ov->kv) : 0;
}

void mt_fx_overlay_free(mt_fx_overlay *ov)
{
    if (ov) {
        json_decref(ov->kv);
        free(ov);
    }
}

void mt_fx_init_record(mt_fx *fx, mt_txn *snapshot, mt_fx_overlay *ov, const char *sub,
                       const mt_event *trigger)
{
    mt_assert(ov); /* rec with no overlay is buffered mode */
    fx_init(fx, snapshot, sub, trigger);
    fx->rec = mt_xcalloc(1, sizeof *fx->rec);
    fx->rec->ov = ov;
    fx->rec->reads = json_object();
    fx->rec->writes = json_object();
    fx->rec->logs = json_array();
}

void mt_fx_init_buffered(mt_fx *fx, mt_txn *txn, const char *sub, const mt_event *trigger)
{
    fx_init(fx, txn, sub, trigger);
    fx->base = txn;
    fx->kv_cur = &fx->own_cur;
    /* Its writes wait in a small array (a kv handler makes one or two); a
     * jansson object per run was a tenth of a kv handler's run. */
    fx->rec = mt_xcalloc(1, sizeof *fx->rec);
}

static mt_err write_all(mt_txn *t, json_t *writes)
{
    const char *k;
    size_t kl;
    json_t *v;
    json_object_keylen_foreach(writes, k, kl, v) {
        mt_err rc = json_is_null(v) ? mt_store_del(t, MT_DB_KV, k, kl)
                                    : mt_store_put(t, MT_DB_KV, k, kl, json_string_value(v),
                                                   json_string_length(v), 0);
        if (rc && rc != MT_ENOTFOUND) {
            return rc;
        }
    }
    return MT_OK;
}

static void rec_free(mt_fx_rec *r);

static pending *pend_find(mt_fx_rec *r, const void *k, size_t kl)
{
    for (int i = 0; i < r->npend; i++) {
        if (r->pend[i].kl == kl && memcmp(r->pend[i].block, k, kl) == 0) {
            return &r->pend[i];
        }
    }
    return NULL;
}

/* Moves the waiting writes into r->writes, which takes all later ones. */
static void pend_spill(mt_fx_rec *r)
{
    if (r->writes) {
        return;
    }
    r->writes = json_object();
    for (int i = 0; i < r->npend; i++) {
        pending *p = &r->pend[i];
        json_object_setn_new(r->writes, p->block, p->kl,
                             p->deleted ? json_null()
                                        : json_stringn_nocheck(p->block + p->kl, p->vl));
        free(p->block);
    }
    free(r->pend);
    r->pend = NULL;
    r->npend = r->cap = 0;
}

/* Buffered mode: key k now has value v (NULL: deleted). */
static void pend_set(mt_fx_rec *r, const void *k, size_t kl, const char *v, size_t vl)
{
    pending *p = r->writes ? NULL : pend_find(r, k, kl);
    if (!r->writes && !p && r->npend == PENDING_MAX) {
        pend_spill(r);
    }
    if (r->writes) {
        json_object_setn_new(r->writes, k, kl, v ? json_stringn_nocheck(v, vl) : json_null());
        return;
    }
    if (p) {
        free(p->block);
    } else {
        if (r->npend == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 4;
            r->pend = mt_xrealloc(r->pend, (size_t) r->cap * sizeof *r->pend);
        }
        p = &r->pend[r->npend++];
    }
    p->kl = kl;
    p->vl = v ? vl : 0;
    p->deleted = !v;
    p->block = mt_xmalloc(kl + p->vl + 1);
    memcpy(p->block, k, kl);
    if (v) {
        memcpy(p->block + kl, v, vl);
    }
}

/*
 * Writes what buffered mode kept to 't'. With 'fx' ('t' is then its base),
 * the write of the key fx left its kv cursor at goes first and through the
 * cursor, before any other write of the table can move it.
 */
static mt_err write_pending(mt_txn *t, const mt_fx_rec *r, mt_fx *fx)
{
    if (r->writes) {
        return write_all(t, r->writes);
    }
    const pending *at = NULL;
    if (fx && fx->cur_kl) { /* a key found through the cursor, which is then open */
        at = pend_find((mt_fx_rec *) r, fx->cur_key, fx->cur_kl);
        if (at && !at->deleted) {
            mt_err rc = mt_store_cursor_put(*fx->kv_cur, at->block, at->kl, at->block + at->kl,
                                            at->vl, MT_STORE_CURRENT);
            if (rc) {
                return rc;
            }
        } else {
            at = NULL;
        }
    }
    for (int i = 0; i < r->npend; i++) {
        const pending *p = &r->pend[i];
        if (p == at) {
            continue;
        }
        mt_err rc = p->deleted ? mt_store_del(t, MT_DB_KV, p->block, p->kl)
                               : mt_store_put(t, MT_DB_KV, p->block, p->kl, p->block + p->kl,
                                              p->vl, 0);
        if (rc && rc != MT_ENOTFOUND) {
            return rc;
        }
    }
    return MT_OK;
}

/* Lets go of the kv cursor: closes it if it is fx's own, forgets where it is. */
static void kv_cursor_close(mt_fx *fx)
{
    mt_store_cursor_close(fx->own_cur);
    fx->own_cur = NULL;
    fx->cur_kl = 0;
}

void mt_fx_lend_cursor(mt_fx *fx, mt_cursor **slot)
{
    mt_assert(fx->base && !fx->own_cur);
    fx->kv_cur = slot;
}

/* A copy of a value: nothing is shared between threads. */
static json_t *value_copy(const json_t *v)
{
    return json_is_string(v) ? json_stringn_nocheck(json_string_value(v), json_string_length(v))
                             : json_null();
}

/*
 * json_object_update for keys with NUL bytes ("table NUL key"), which it
 * would cut. The values are copied: a worker's overlay and the effects the
 * writer applies must not share reference counts across threads.
 */
static void merge_keys(json_t *into, json_t *from)
{
    const char *k;
    size_t kl;
    json_t *v;
    json_object_keylen_foreach(from, k, kl, v) {
        json_object_setn_new(into, k, kl, value_copy(v));
    }
}

/* Buffered mode meets a scan: from here on, a savepoint. */
static mt_err escalate(mt_fx *fx)
{
    kv_cursor_close(fx); /* a transaction's cursors wait while it has a savepoint */
    mt_err rc = mt_store_savepoint(fx->base, &fx->savepoint);
    if (rc == MT_OK) {
        rc = write_pending(fx->savepoint, fx->rec, NULL);
        if (rc) {
            mt_store_savepoint_rollback(fx->savepoint);
            fx->savepoint = NULL;
        }
    }
    if (rc) {
        return rc;
    }
    fx->txn = fx->savepoint;
    rec_free(fx->rec);
    fx->rec = NULL;
    return MT_OK;
}

/* Drops the emitted events still waiting. */
static void emits_free(mt_fx *fx)
{
    if (fx->emits) {
        mt_event_batch_free(fx->emits);
        free(fx->emits);
        fx->emits = NULL;
    }
}

/* Appends the waiting emitted events at the sequences their emits were told. */
static mt_err append_emits(mt_fx *fx)
{
    mt_event_batch *b = fx->emits;
    mt_log_result *res = mt_xcalloc((size_t) b->count, sizeof *res);
    int64_t current;
    mt_err rc = mt_log_append(fx->txn, b, NULL, res, &current);
    for (int i = 0; i < b->count && rc == MT_OK; i++) {
        if (res[i].duplicate || res[i].sequence != fx->emit_first + (uint64_t) i) {
            mt_error("subscription %s: an event emitted for sequence %llu was told %llu and "
                     "appended at %llu%s", fx->sub, (unsigned long long) fx->trigger->sequence,
                     (unsigned long long) (fx->emit_first + (uint64_t) i),
                     (unsigned long long) res[i].sequence,
                     res[i].duplicate ? " (a duplicate)" : "");
            rc = MT_EIO;
        }
    }
    free(res);
    return rc;
}

mt_err mt_fx_finish(mt_fx *fx, bool keep)
{
    mt_err rc = MT_OK;
    if (keep && fx->emits) {
        rc = append_emits(fx);
        keep = rc == MT_OK;
    }
    emits_free(fx);
    if (fx->savepoint) {
        if (keep) {
            rc = mt_store_savepoint_release(fx->savepoint);
        } else {
            mt_store_savepoint_rollback(fx->savepoint);
        }
        fx->savepoint = NULL;
    } else if (fx->rec && keep) {
        rc = write_pending(fx->base, fx->rec, fx);
    }
    kv_cursor_close(fx);
    rec_free(fx->rec);
    fx->rec = NULL;
    fx->txn = fx->base;
    return rc;
}

static void rec_free(mt_fx_rec *r)
{
    if (r) {
        json_decref(r->reads);
        json_decref(r->writes);
        json_decref(r->logs);
        for (int i = 0; i < r->npend; i++) {
            free(r->pend[i].block);
        }
        free(r->pend);
        free(r);
    }
}

mt_fx_effects *mt_fx_record_end(mt_fx *fx, bool keep)
{
    mt_fx_rec *r = fx->rec;
    mt_assert(r);
    fx->rec = NULL;
    if (r->replay_impossible) {
        /*
         * It runs again on the writer, which will most likely write what it
         * wrote up to here: the worker's next runs read that (a counter
         * after an emit), and the writer checks every value read anyway.
         * Not a run that failed: the store never gets its writes.
         */
        if (keep) {
            merge_keys(r->ov->kv, r->writes);
        }
        rec_free(r);
        return NULL;
    }
    if (keep) {
        merge_keys(r->ov->kv, r->writes);
    }
    mt_fx_effects *e = mt_xmalloc(sizeof *e);
    e->reads = r->reads;
    e->writes = r->writes;
    e->logs = r->logs;
    e->written = r->written;
    free(r);
    return e;
}

void mt_fx_effects_free(mt_fx_effects *e)
{
    if (e) {
        json_decref(e->reads);
        json_decref(e->writes);
        json_decref(e->logs);
        free(e);
    }
}

mt_err mt_fx_effects_validate(const mt_fx_effects *e, mt_txn *txn)
{
    const char *k;
    size_t kl;
    json_t *want;
    json_object_keylen_foreach(e->reads, k, kl, want) {
        const void *v;
        size_t vl;
        mt_err rc = mt_store_get(txn, MT_DB_KV, k, kl, &v, &vl);
        if (rc == MT_ENOTFOUND) {
            if (!json_is_null(want)) {
                return MT_ECONFLICT;
            }
            continue;
        }
        if (rc) {
            return rc;
        }
        if (json_is_null(want) || json_string_length(want) != vl ||
            memcmp(json_string_value(want), v, vl) != 0) {
            return MT_ECONFLICT;
        }
    }
    return MT_OK;
}

mt_err mt_fx_effects_apply(const mt_fx_effects *e, mt_fx *fx, bool writes)
{
    if (writes) {
        /* Buffered: they join the invocation's own writes, applied by mt_fx_finish. */
        if (fx->rec) {
            pend_spill(fx->rec);
            merge_keys(fx->rec->writes, e->writes);
            /* Counted as if written here: what a run may write is checked on the writer. */
            fx->rec->written += e->written;
        } else {
            mt_err rc = write_all(fx->txn, e->writes);
            if (rc) {
                return rc;
            }
        }
    }
    size_t i;
    json_t *l;
    json_array_foreach(e->logs, i, l) {
        /* Cut and counted when recorded. */
        log_line(fx, (mt_diag_level) json_integer_value(json_array_get(l, 0)),
                 json_string_value(json_array_get(l, 1)));
    }
    return MT_OK;
}

/*
 * An effect that needs the real transaction. Buffered mode moves to a
 * savepoint (MT_OK: go on directly); record mode cannot, and the
 * invocation runs again on the writer.
 */
static mt_err needs_txn(mt_fx *fx, char *err, size_t errlen, const char *what)
{
    if (!fx->rec) {
        return MT_OK;
    }
    if (!fx->rec->ov) {
        mt_err rc = escalate(fx);
        if (rc && err) {
            snprintf(err, errlen, "%s: %s", what, mt_err_str(rc));
        }
        return rc;
    }
    fx->rec->replay_impossible = true;
    if (err) {
        snprintf(err, errlen, "%s runs on the writer", what);
    }
    return MT_EUNAVAIL;
}

/* One line, kept or written now. */
static void log_line(mt_fx *fx, mt_diag_level level, const char *msg)
{
    if (fx->rec && fx->rec->ov) {
        json_array_append_new(fx->rec->logs,
                              json_pack("[io]", (int) level, mt_diag_text(msg, strlen(msg))));
        return;
    }
    char seq[24];
    snprintf(seq, sizeof seq, "%llu", (unsigned long long) fx->trigger->sequence);
    const char *corr = fx->trigger->attr[MT_ATTR_CORRELATIONID]
                           ? fx->trigger->attr[MT_ATTR_CORRELATIONID]
                           : fx->trigger->attr[MT_ATTR_ID];
    const char *fields[] = {"subscription", fx->sub, "sequence", seq, "correlationid", corr,
                            "causationid", fx->trigger->attr[MT_ATTR_ID], NULL};
    mt_diag_emit(level, fields, "%s", msg);
}

void mt_fx_log(mt_fx *fx, mt_diag_level level, const char *msg)
{
    if (fx->log_lines > MT_FX_LOG_LINES) {
        return; /* dropped; the line that said so went out */
    }
    size_t len = strlen(msg);
    size_t shown = len < MT_FX_LOG_LINE_MAX ? len : MT_FX_LOG_LINE_MAX; /* what counts */
    if (fx->log_lines == MT_FX_LOG_LINES || fx->log_bytes + shown > MT_FX_LOG_BYTES) {
        fx->log_lines = MT_FX_LOG_LINES + 1;
        char note[160];
        snprintf(note, sizeof note,
                 "this run logged %u lines or %u KiB, the most one run may: the rest of its "
                 "lines are dropped",
                 MT_FX_LOG_LINES, MT_FX_LOG_BYTES >> 10);
        log_line(fx, MT_DIAG_WARN, note);
        return;
    }
    fx->log_lines++;
    fx->log_bytes += shown;
    if (len <= MT_FX_LOG_LINE_MAX) {
        log_line(fx, level, msg);
        return;
    }
    size_t keep = mt_diag_cut_at(msg, len, MT_FX_LOG_LINE_MAX);
    mt_buf b;
    mt_buf_init(&b);
    mt_buf_add(&b, msg, keep);
    mt_buf_addf(&b, " ... (%zu more bytes cut)", len - keep);
    log_line(fx, level, mt_buf_cstr(&b));
    mt_buf_free(&b);
}

void mt_fx_free(mt_fx *fx)
{
    free(fx->reject);
    free(fx->reply_to);
    fx->reject = fx->reply_to = NULL;
    rec_free(fx->rec);
    fx->rec = NULL;
    emits_free(fx);
    kv_cursor_close(fx);
    if (fx->savepoint) {
        mt_store_savepoint_rollback(fx->savepoint);
        fx->savepoint = NULL;
    }
}

/* Builds "table NUL key" into k; returns its length, or 0 if a name is bad. */
static size_t kv_key(uint8_t *k, const char *table, const char *key)
{
    size_t a = strlen(table), b = strlen(key);
    if (a == 0 || a > MT_FX_MAX_TABLE || b > MT_FX_MAX_KEY) {
        return 0;
    }
    memcpy(k, table, a);
    k[a] = 0;
    memcpy(k + a + 1, key, b);
    return a + 1 + b;
}

mt_err mt_fx_kv_get(mt_fx *fx, const char *table, const char *key, const char **json,
                    size_t *len)
{
    *json = NULL;
    *len = 0;
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    size_t kl = kv_key(k, table, key);
    if (!kl || !*key) {
        return MT_EINVAL;
    }
    const pending *own = fx->rec && !fx->rec->writes ? pend_find(fx->rec, k, kl) : NULL;
    if (own) {
        /* Its own write: the same again. */
        if (own->deleted) {
            return MT_ENOTFOUND;
        }
        *json = own->block + own->kl;
        *len = own->vl;
        return MT_OK;
    }
    json_t *seen;
    if (fx->rec && ((seen = json_object_getn(fx->rec->writes, (const char *) k, kl)) ||
                    (fx->rec->reads &&
                     (seen = json_object_getn(fx->rec->reads, (const char *) k, kl))))) {
        /* Its own write, or a value it read before: the same again. */
        if (json_is_null(seen)) {
            return MT_ENOTFOUND;
        }
        *json = json_string_value(seen);
        *len = json_string_length(seen);
        return MT_OK;
    }
    if (fx->rec && fx->rec->ov && (seen = json_object_getn(fx->rec->ov->kv, (const char *) k, kl))) {
        /* An earlier invocation's write in this round: read, so validated too. */
        json_t *r = value_copy(seen);
        json_object_setn_new(fx->rec->reads, (const char *) k, kl, r);
        return json_is_null(r) ? MT_ENOTFOUND
                               : (*json = json_string_value(r), *len = json_string_length(r),
                                  MT_OK);
    }
    const void *v;
    mt_err rc;
    if (fx->rec && !fx->rec->ov) {
        /* Buffered, before any savepoint: through the cursor, which stays at the key. */
        rc = *fx->kv_cur ? MT_OK : mt_store_cursor_open(fx->base, MT_DB_KV, fx->kv_cur);
        if (rc == MT_OK) {
            rc = mt_store_cursor_find(*fx->kv_cur, k, kl, &v, len);
        }
        fx->cur_kl = rc == MT_OK ? kl : 0;
        if (rc == MT_OK) {
            memcpy(fx->cur_key, k, kl);
        }
    } else {
        rc = mt_store_get(fx->txn, MT_DB_KV, k, kl, &v, len);
    }
    if (rc == MT_OK) {
        *json = v;
    }
    if (fx->rec && fx->rec->ov && rc != MT_OK && rc != MT_ENOTFOUND) {
        /* The snapshot failed: what the handler makes of that is no result to apply. */
        fx->rec->replay_impossible = true;
    }
    if (fx->rec && fx->rec->ov && (rc == MT_OK || rc == MT_ENOTFOUND)) {
        json_t *r = rc == MT_OK ? json_stringn_nocheck(v, *len) : json_null();
        json_object_setn_new(fx->rec->reads, (const char *) k, kl, r);
        if (rc == MT_OK) {
            *json = json_string_value(r);
        }
    }
    return rc;
}

/*
 * Counts a write that waits in memory (buffered or record mode) against
 * MT_FX_MAX_WRITTEN: MT_ETOOBIG past it. Overwrites count again, so this
 * bounds what a run may have waiting, with room to spare.
 */
static mt_err count_written(mt_fx *fx, size_t n)
{
    if (!fx->rec) {
        return MT_OK;
    }
    if (n > MT_FX_MAX_WRITTEN - fx->rec->written) {
        return MT_ETOOBIG;
    }
    fx->rec->written += n;
    return MT_OK;
}

mt_err mt_fx_kv_put(mt_fx *fx, const char *table, const char *key, const char *json, size_t len)
{
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    size_t kl = kv_key(k, table, key);
    if (!kl || !*key || len > MT_FX_MAX_VALUE) {
        return MT_EINVAL;
    }
    mt_err rc = count_written(fx, kl + len);
    if (rc) {
        return rc;
    }
    if (fx->rec && !fx->rec->ov) {
        pend_set(fx->rec, k, kl, json, len);
        return MT_OK;
    }
    if (fx->rec) {
        json_object_setn_new(fx->rec->writes, (const char *) k, kl, json_stringn_nocheck(json, len));
        return MT_OK;
    }
    return mt_store_put(fx->txn, MT_DB_KV, k, kl, json, len, 0);
}

mt_err mt_fx_kv_del(mt_fx *fx, const char *table, const char *key)
{
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    size_t kl = kv_key(k, table, key);
    if (!kl || !*key) {
        return MT_EINVAL;
    }
    mt_err rc = count_written(fx, kl);
    if (rc) {
        return rc;
    }
    if (fx->rec && !fx->rec->ov) {
        pend_set(fx->rec, k, kl, NULL, 0);
        return MT_OK;
    }
    if (fx->rec) {
        json_object_setn_new(fx->rec->writes, (const char *) k, kl, json_null());
        return MT_OK;
    }
    rc = mt_store_del(fx->txn, MT_DB_KV, k, kl);
    return rc == MT_ENOTFOUND ? MT_OK : rc;
}

mt_err mt_fx_kv_scan(mt_fx *fx, const char *table, const char *prefix, size_t limit,
                     int (*visit)(const char *key, size_t klen, const char *json, size_t len,
                                  void *arg),
                     void *arg)
{
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    size_t kl = kv_key(k, table, prefix ? prefix : "");
    if (!kl) {
        return MT_EINVAL;
    }
    mt_err nrc = needs_txn(fx, NULL, 0, "scan");
    if (nrc) {
        return nrc;
    }
    size_t tl = strlen(table) + 1;
    mt_cursor *c;
    mt_err rc = mt_store_cursor_open(fx->txn, MT_DB_KV, &c);
    if (rc) {
        return rc;
    }
    const void *ck, *cv;
    size_t ckl, cvl;
    rc = mt_store_cursor_seek(c, k, kl, &ck, &ckl, &cv, &cvl);
    for (size_t n = 0; rc == MT_OK && n < limit; n++) {
        if (ckl < kl || memcmp(ck, k, kl) != 0) {
            break;
        }
        if (visit((const char *) ck + tl, ckl - tl, cv, cvl, arg)) {
            break;
        }
        rc = mt_store_cursor_next(c, &ck, &ckl, &cv, &cvl);
    }
    mt_store_cursor_close(c);
    return rc == MT_ENOTFOUND ? MT_OK : rc;
}

size_t mt_fx_pending_bytes(const mt_fx *fx)
{
    size_t n = (size_t) fx->emitted * 512; /* an event's record and index entries */
    if (fx->rec) {
        /* Each key's overhead, whether its write waits in 'pend' or in 'writes'. */
        size_t keys = fx->rec->writes ? json_object_size(fx->rec->writes) : (size_t) fx->rec->npend;
        n += fx->rec->written + keys * 64;
    }
    if (fx->emits) {
        n += fx->emits->buf.len;
    }
    return n;
}

int64_t mt_fx_now_us(const mt_fx *fx)
{
    int64_t us = fx->trigger->recordedtime_us;
    if (fx->trigger->attr[MT_ATTR_TIME]) {
        mt_time_parse(fx->trigger->attr[MT_ATTR_TIME], &us);
    }
    return us;
}

static mt_err emit_event(mt_fx *fx, const char *type, const char *data, size_t data_len,
                         json_t *value, const char *subject, int64_t deliverafter_us,
                         const char *corr_id, uint64_t *sequence, char *err, size_t errlen);

mt_err mt_fx_emit_value(mt_fx *fx, const char *type, const char *data, size_t data_len,
                        json_t *value, const char *subject, int64_t deliverafter_us,
                        uint64_t *sequence, char *err, size_t errlen)
{
    const mt_event *tr = fx->trigger;
    const char *corr = tr->attr[MT_ATTR_CORRELATIONID] ? tr->attr[MT_ATTR_CORRELATIONID]
                                                       : tr->attr[MT_ATTR_ID];
    return emit_event(fx, type, data, data_len, value, subject, deliverafter_us, corr, sequence,
                      err, errlen);
}

mt_err mt_fx_emit(mt_fx *fx, const char *type, const char *data, size_t data_len,
                  const char *subject, int64_t deliverafter_us, uint64_t *sequence, char *err,
                  size_t errlen)
{
    return mt_fx_emit_value(fx, type, data, data_len, NULL, subject, deliverafter_us, sequence,
                            err, errlen);
}

mt_err mt_fx_reply(mt_fx *fx, const char *data, size_t data_len, uint64_t *sequence, char *err,
                   size_t errlen)
{
    *sequence = 0;
    const mt_event *tr = fx->trigger;
    if (!tr->attr[MT_ATTR_REPLYTO]) {
        snprintf(err, errlen, "ctx.reply: the event has no replyto attribute");
        return MT_EINVAL;
    }
    return emit_event(fx, tr->attr[MT_ATTR_REPLYTO], data, data_len, NULL, NULL, 0,
                      tr->attr[MT_ATTR_ID], sequence, err, errlen);
}

/* MT_EINVAL with "emit: NAME must be a UTF-8 string" unless 'v' is valid UTF-8. */
static mt_err check_utf8(const char *name, const char *v, char *err, size_t errlen)
{
    if (!mt_utf8_valid(v, strlen(v))) {
        snprintf(err, errlen, "emit: %s must be a UTF-8 string", name);
        return MT_EINVAL;
    }
    return MT_OK;
}

/*
 * Buffered mode: 'ev' waits in fx for the run's outcome (its strings are
 * copied into the batch; 'parsed', its data, is taken). An event of this
 * id already in the log (a re-run of a handled trigger) is answered with
 * its sequence and not added, as an append would.
 */
static mt_err emit_later(mt_fx *fx, const mt_event *ev, json_t *parsed, uint64_t *sequence,
                         char *err, size_t errlen)
{
    uint64_t seq;
    mt_err rc = mt_log_find_id(fx->txn, ev->attr[MT_ATTR_SOURCE], ev->attr[MT_ATTR_ID], &seq);
    if (rc == MT_OK) {
        json_decref(parsed);
        *sequence = seq;
        fx->emitted++;
        return MT_OK;
    }
    if (rc == MT_ENOTFOUND) {
        rc = fx->emits ? MT_OK : mt_log_head(fx->txn, &seq);
    }
    if (rc) {
        snprintf(err, errlen, "emit: %s", mt_err_str(rc));
        json_decref(parsed);
        return rc;
    }
    if (!fx->emits) {
        fx->emits = mt_xmalloc(sizeof *fx->emits);
        mt_event_batch_init(fx->emits);
        fx->emits->data_local = true; /* values made here, on the writer */
        fx->emit_first = seq + 1;
    } else if (fx->emits->buf.len + ev->data_len > MT_FX_MAX_EMITTED) {
        snprintf(err, errlen, "emit: the events emitted by one run would take more than %u MiB",
                 MT_FX_MAX_EMITTED >> 20);
        json_decref(parsed);
        return MT_EINVAL;
    }
    mt_event_batch_add(fx->emits, ev);
    fx->emits->data[fx->emits->count - 1] = parsed;
    *sequence = fx->emit_first + (uint64_t) fx->emits->count - 1;
    fx->emitted++;
    return MT_OK;
}

/* 'value' (the data's, or NULL) is taken. */
static mt_err emit_event(mt_fx *fx, const char *type, const char *data, size_t data_len,
                         json_t *value, const char *subject, int64_t deliverafter_us,
                         const char *corr, uint64_t *sequence, char *err, size_t errlen)
{
    *sequence = 0;
    if (!fx->base) {
        /*
         * Record mode: the handler sees the new event's sequence, which
         * only the writer knows, so the run will run again there. It goes
         * on with 0 for it, so that its kv writes after the emit reach the
         * overlay too (mt_fx_record_end): the subject's next run reads
         * them. Should the 0 make it write otherwise, the writer's check
         * of what the next run read finds out.
         */
        json_decref(value);
        fx->rec->replay_impossible = true;
        return MT_OK;
    }
    mt_err rc;
    /*
     * The event is built here with the checks a published one gets
     * (mt_event_set_attr, jansson for the data): what the engine fills in
     * (ids, source, causation) is within bounds by construction.
     */
    const mt_event *tr = fx->trigger;
    char id[MT_EVENT_MAX_ID + 1], source[MT_EVENT_MAX_SOURCE + 1], ts[40];
    if (fx->incarnation) {
        /* A subscription made again: '~' is in no subscription name. */
        snprintf(id, sizeof id, "%.64s~%llu:%llu:%d", fx->sub,
                 (unsigned long long) fx->incarnation, (unsigned long long) tr->sequence,
                 fx->emitted);
    } else {
        snprintf(id, sizeof id, "%.64s:%llu:%d", fx->sub, (unsigned long long) tr->sequence,
                 fx->emitted);
    }
    snprintf(source, sizeof source, "/moontide/subscriptions/%.64s", fx->sub);
    const char *subj = subject ? subject : tr->attr[MT_ATTR_SUBJECT];
    char msg[512];
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = id;
    ev.attr[MT_ATTR_SOURCE] = source;
    ev.attr[MT_ATTR_CAUSATIONID] = tr->attr[MT_ATTR_ID];
    ev.attr[MT_ATTR_CORRELATIONID] = corr;
    if ((rc = check_utf8("type", type, err, errlen)) ||
        (subj && (rc = check_utf8("subject", subj, err, errlen)))) {
        json_decref(value);
        return rc;
    }
    if (mt_event_set_attr(&ev, MT_ATTR_TYPE, type, msg, sizeof msg) ||
        (subj && mt_event_set_attr(&ev, MT_ATTR_SUBJECT, subj, msg, sizeof msg))) {
        snprintf(err, errlen, "emit: %s", msg);
        json_decref(value);
        return MT_EINVAL;
    }
    if (deliverafter_us) {
        mt_time_format_us(deliverafter_us, ts, sizeof ts);
        if (mt_event_set_attr(&ev, MT_ATTR_DELIVERAFTER, ts, msg, sizeof msg)) {
            snprintf(err, errlen, "emit: %s", msg);
            json_decref(value);
            return MT_EINVAL;
        }
    }
    json_t *parsed = value;
    if (!data) {
        json_decref(parsed);
        parsed = NULL;
    } else if (!parsed) {
        json_error_t je;
        parsed = json_loadb(data, data_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!parsed) {
            snprintf(err, errlen, "emit: data: malformed JSON at byte %d: %s", je.position,
                     je.text);
            return MT_EINVAL;
        }
    }
    if (data) {
        ev.data_kind = MT_DATA_JSON;
        ev.data = (const uint8_t *) data;
        ev.data_len = data_len;
    }
    return emit_later(fx, &ev, parsed, sequence, err, errlen);
}

void mt_fx_reject(mt_fx *fx, const char *reason)
{
    free(fx->reject);
    fx->reject = mt_xstrdup(reason && *reason ? reason : "no reason given");
}

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_fx.h"
#include "mt_log.h"
#include "mt_mem.h"
#include "mt_util.h"

void mt_fx_init(mt_fx *fx, mt_txn *txn, const char *sub, const mt_event *trigger)
{
    memset(fx, 0, sizeof *fx);
    fx->txn = txn;
    fx->sub = sub;
    fx->trigger = trigger;
}

void mt_fx_free(mt_fx *fx)
{
    free(fx->reject);
    free(fx->reply_to);
    fx->reject = fx->reply_to = NULL;
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
    const void *v;
    mt_err rc = mt_store_get(fx->txn, MT_DB_KV, k, kl, &v, len);
    if (rc == MT_OK) {
        *json = v;
    }
    return rc;
}

mt_err mt_fx_kv_put(mt_fx *fx, const char *table, const char *key, const char *json, size_t len)
{
    uint8_t k[MT_FX_MAX_TABLE + MT_FX_MAX_KEY + 2];
    size_t kl = kv_key(k, table, key);
    if (!kl || !*key || len > MT_FX_MAX_VALUE) {
        return MT_EINVAL;
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
    mt_err rc = mt_store_del(fx->txn, MT_DB_KV, k, kl);
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

int64_t mt_fx_now_us(const mt_fx *fx)
{
    int64_t us = fx->trigger->recordedtime_us;
    if (fx->trigger->attr[MT_ATTR_TIME]) {
        mt_time_parse(fx->trigger->attr[MT_ATTR_TIME], &us);
    }
    return us;
}

static mt_err emit_event(mt_fx *fx, const char *type, const char *data, size_t data_len,
                         const char *subject, int64_t deliverafter_us, const char *corr_id,
                         uint64_t *sequence, char *err, size_t errlen);

mt_err mt_fx_emit(mt_fx *fx, const char *type, const char *data, size_t data_len,
                  const char *subject, int64_t deliverafter_us, uint64_t *sequence, char *err,
                  size_t errlen)
{
    const mt_event *tr = fx->trigger;
    const char *corr = tr->attr[MT_ATTR_CORRELATIONID] ? tr->attr[MT_ATTR_CORRELATIONID]
                                                       : tr->attr[MT_ATTR_ID];
    return emit_event(fx, type, data, data_len, subject, deliverafter_us, corr, sequence, err,
                      errlen);
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
    return emit_event(fx, tr->attr[MT_ATTR_REPLYTO], data, data_len, NULL, 0, tr->attr[MT_ATTR_ID],
                      sequence, err, errlen);
}

static mt_err emit_event(mt_fx *fx, const char *type, const char *data, size_t data_len,
                         const char *subject, int64_t deliverafter_us, const char *corr,
                         uint64_t *sequence, char *err, size_t errlen)
{
    *sequence = 0;
    const mt_event *tr = fx->trigger;
    char id[MT_EVENT_MAX_ID + 1], source[MT_EVENT_MAX_SOURCE + 1];
    snprintf(id, sizeof id, "%.64s:%llu:%d", fx->sub, (unsigned long long) tr->sequence,
             fx->emitted);
    snprintf(source, sizeof source, "/moontide/subscriptions/%.64s", fx->sub);
    /* Build it as a structured event so that one parser validates everything. */
    json_t *o = json_object();
    json_object_set_new(o, "specversion", json_string("1.0"));
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "source", json_string(source));
    json_t *t = json_string(type);
    if (!t) {
        json_decref(o);
        snprintf(err, errlen, "emit: type must be a UTF-8 string");
        return MT_EINVAL;
    }
    json_object_set_new(o, "type", t);
    const char *subj = subject ? subject : tr->attr[MT_ATTR_SUBJECT];
    if (subj) {
        json_t *sj = json_string(subj);
        if (!sj) {
            json_decref(o);
            snprintf(err, errlen, "emit: subject must be a UTF-8 string");
            return MT_EINVAL;
        }
        json_object_set_new(o, "subject", sj);
    }
    json_object_set_new(o, "causationid", json_string(tr->attr[MT_ATTR_ID]));
    json_object_set_new(o, "correlationid", json_string(corr));
    if (deliverafter_us) {
        char ts[40];
        mt_time_format_us(deliverafter_us, ts, sizeof ts);
        json_object_set_new(o, "deliverafter", json_string(ts));
    }
    char *env = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    mt_buf body;
    mt_buf_init(&body);
    size_t n = strlen(env);
    mt_buf_add(&body, env, n - 1);
    if (data) {
        mt_buf_adds(&body, ",\"data\":");
        mt_buf_add(&body, data, data_len);
    }
    mt_buf_adds(&body, "}");
    free(env);

    mt_event_batch b;
    mt_event_batch_init(&b);
    char perr[512];
    mt_err rc = mt_event_parse_structured(body.data, body.len, &b, perr, sizeof perr);
    mt_buf_free(&body);
    if (rc) {
        snprintf(err, errlen, "emit: %s", perr);
    } else {
        mt_log_result res;
        int64_t current;
        rc = mt_log_append(fx->txn, &b, NULL, &res, &current);
        if (rc == MT_OK) {
            *sequence = res.sequence;
            fx->emitted++;
        } else {
            snprintf(err, errlen, "emit: %s", mt_err_str(rc));
        }
    }
    mt_event_batch_free(&b);
    return rc;
}

void mt_fx_reject(mt_fx *fx, const char *reason)
{
    free(fx->reject);
    fx->reject = mt_xstrdup(reason && *reason ? reason : "rejected");
}

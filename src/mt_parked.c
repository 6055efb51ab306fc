#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_parked.h"
#include "mt_util.h"

#define FORMAT 1
#define FIXED 24
#define REDRIVEN 0x80 /* in the state byte */

void mt_parked_init(mt_parked *p)
{
    memset(p, 0, sizeof *p);
}

void mt_parked_free(mt_parked *p)
{
    free(p->errors);
    p->errors = NULL;
}

void mt_parked_encode(const mt_parked *p, mt_buf *out)
{
    size_t ll = strlen(p->lane);
    size_t el = p->errors ? strlen(p->errors) : 0;
    mt_buf_reserve(out, FIXED + ll + el);
    uint8_t *b = (uint8_t *) out->data + out->len;
    b[0] = FORMAT;
    b[1] = (uint8_t) ((unsigned) p->state | (p->redriven ? REDRIVEN : 0));
    mt_put_be32(b + 2, p->attempts);
    mt_put_be64(b + 6, (uint64_t) p->due_us);
    mt_put_be64(b + 14, p->lease);
    b[22] = (uint8_t) (ll >> 8);
    b[23] = (uint8_t) ll;
    memcpy(b + FIXED, p->lane, ll);
    if (el) {
        memcpy(b + FIXED + ll, p->errors, el);
    }
    out->len += FIXED + ll + el;
}

/* A record of the earlier layout: {"state", "attempts", "due", "lane", "lease", "errors"}. */
static mt_err decode_json(const void *v, size_t len, mt_parked *p)
{
    json_t *o = json_loadb(v, len, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return MT_EIO;
    }
    const char *state = json_string_value(json_object_get(o, "state"));
    p->state = !state                        ? MT_PARK_NONE
               : strcmp(state, "blocked") == 0 ? MT_PARK_BLOCKED
               : strcmp(state, "leased") == 0  ? MT_PARK_LEASED
                                               : MT_PARK_RETRY;
    p->attempts = (uint32_t) json_integer_value(json_object_get(o, "attempts"));
    p->due_us = json_integer_value(json_object_get(o, "due"));
    const char *lane = json_string_value(json_object_get(o, "lane"));
    snprintf(p->lane, sizeof p->lane, "%s", lane ? lane : "");
    const char *lease = json_string_value(json_object_get(o, "lease"));
    const char *dash = lease ? strchr(lease, '-') : NULL;
    p->lease = dash ? strtoull(dash + 1, NULL, 16) : 0;
    json_t *errs = json_object_get(o, "errors");
    if (json_is_array(errs) && json_array_size(errs) > 0) {
        p->errors = json_dumps(errs, JSON_COMPACT);
    }
    json_decref(o);
    return MT_OK;
}

mt_err mt_parked_decode(const void *v, size_t len, mt_parked *p)
{
    mt_parked_init(p);
    const uint8_t *b = v;
    if (len > 0 && b[0] == '{') {
        return decode_json(v, len, p);
    }
    if (len < FIXED || b[0] != FORMAT || (b[1] & ~REDRIVEN) > MT_PARK_LEASED) {
        return MT_EIO;
    }
    size_t ll = ((size_t) b[22] << 8) | b[23];
    if (ll > MT_LANE_MAX || FIXED + ll > len) {
        return MT_EIO;
    }
    p->state = (mt_park_state) (b[1] & ~REDRIVEN);
    p->redriven = (b[1] & REDRIVEN) != 0;
    p->attempts = mt_get_be32(b + 2);
    p->due_us = (int64_t) mt_get_be64(b + 6);
    p->lease = mt_get_be64(b + 14);
    memcpy(p->lane, b + FIXED, ll);
    p->lane[ll] = '\0';
    size_t el = len - FIXED - ll;
    if (el) {
        p->errors = mt_xstrndup((const char *) b + FIXED + ll, el);
    }
    return MT_OK;
}

mt_err mt_parked_peek(const void *v, size_t len, mt_park_state *state, uint32_t *attempts)
{
    const uint8_t *b = v;
    if (len > 0 && b[0] == '{') {
        mt_parked p;
        mt_parked_init(&p);
        mt_err rc = decode_json(v, len, &p);
        *state = p.state;
        *attempts = p.attempts;
        mt_parked_free(&p);
        return rc;
    }
    if (len < FIXED || b[0] != FORMAT || (b[1] & ~REDRIVEN) > MT_PARK_LEASED) {
        return MT_EIO;
    }
    *state = (mt_park_state) (b[1] & ~REDRIVEN);
    *attempts = mt_get_be32(b + 2);
    return MT_OK;
}

json_t *mt_parked_errors(const mt_parked *p)
{
    json_t *a = p->errors ? json_loads(p->errors, 0, NULL) : NULL;
    if (!json_is_array(a)) {
        json_decref(a);
        a = json_array();
    }
    return a;
}

void mt_parked_add_error(mt_parked *p, json_t *entry, size_t keep)
{
    json_t *a = mt_parked_errors(p);
    json_array_append_new(a, entry);
    while (json_array_size(a) > keep) {
        json_array_remove(a, 0);
    }
    free(p->errors);
    p->errors = json_dumps(a, JSON_COMPACT);
    json_decref(a);
}

void mt_parked_token(uint64_t seq, uint64_t nonce, char *buf, size_t len)
{
    snprintf(buf, len, "%llu-%016llx", (unsigned long long) seq, (unsigned long long) nonce);
}

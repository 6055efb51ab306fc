#include <ctype.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_diag.h"
#include "mt_event.h"
#include "mt_util.h"

#define HEADER_LEN 44
#define STRINGS_OFF (HEADER_LEN + 4 * MT_ATTR_COUNT)

static const char *const attr_names[MT_ATTR_COUNT] = {
    "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
    "dataversion", "correlationid", "causationid", "traceparent", "expirytime",
    "deliverafter", "replyto", "(extensions)",
};

static const size_t attr_max[MT_ATTR_COUNT] = {
    MT_EVENT_MAX_ID, MT_EVENT_MAX_SOURCE, MT_EVENT_MAX_TYPE, MT_EVENT_MAX_SUBJECT,
    64, 256, MT_EVENT_MAX_ATTR, 64, MT_EVENT_MAX_ID, MT_EVENT_MAX_ID, 256, 64, 64,
    MT_EVENT_MAX_TYPE, 16384,
};

const char *mt_event_attr_name(mt_event_attr a)
{
    mt_assert(a < MT_ATTR_COUNT);
    return attr_names[a];
}

void mt_event_init(mt_event *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->priority = -1;
}

/* ---- record codec ---- */

void mt_event_encode(const mt_event *ev, mt_buf *out)
{
    uint8_t h[STRINGS_OFF];
    memset(h, 0, sizeof h);
    h[0] = MT_EVENT_FORMAT;
    h[1] = (uint8_t) ev->data_kind;
    h[2] = ev->priority < 0 ? 0xff : (uint8_t) ev->priority;
    mt_put_be64(h + 4, ev->sequence);
    mt_put_be64(h + 12, ev->streamversion);
    mt_put_be64(h + 20, (uint64_t) ev->recordedtime_us);
    mt_put_be64(h + 28, (uint64_t) ev->expiry_us);
    mt_put_be64(h + 36, (uint64_t) ev->deliverafter_us);
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        mt_put_be32(h + HEADER_LEN + 4 * i, ev->attr[i] ? (uint32_t) strlen(ev->attr[i]) + 1 : 0);
    }
    mt_buf_add(out, h, sizeof h);
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        if (ev->attr[i]) {
            mt_buf_add(out, ev->attr[i], strlen(ev->attr[i]) + 1);
        }
    }
    mt_buf_add(out, ev->data, ev->data_len);
}

mt_err mt_event_decode(const void *rec, size_t len, mt_event *ev)
{
    mt_event_init(ev);
    const uint8_t *p = rec;
    if (len < STRINGS_OFF || p[0] != MT_EVENT_FORMAT || p[1] > MT_DATA_BINARY ||
        (p[2] > 9 && p[2] != 0xff)) {
        return MT_EINVAL;
    }
    ev->data_kind = p[1];
    ev->priority = p[2] == 0xff ? -1 : p[2];
    ev->sequence = mt_get_be64(p + 4);
    ev->streamversion = mt_get_be64(p + 12);
    ev->recordedtime_us = (int64_t) mt_get_be64(p + 20);
    ev->expiry_us = (int64_t) mt_get_be64(p + 28);
    ev->deliverafter_us = (int64_t) mt_get_be64(p + 36);
    size_t off = STRINGS_OFF;
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        uint32_t n = mt_get_be32(p + HEADER_LEN + 4 * i);
        if (n == 0) {
            continue;
        }
        if (n > len - off || p[off + n - 1] != '\0') {
            mt_event_init(ev);
            return MT_EINVAL;
        }
        ev->attr[i] = (const char *) p + off;
        off += n;
    }
    ev->data = p + off;
    ev->data_len = len - off;
    return MT_OK;
}

void mt_event_rebase(mt_event *ev, const void *from, const void *to)
{
    const char *f = from, *t = to;
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        if (ev->attr[i]) {
            ev->attr[i] = t + (ev->attr[i] - f);
        }
    }
    ev->data = (const uint8_t *) t + ((const char *) ev->data - f);
}

void mt_event_record_set_position(void *rec, uint64_t sequence, uint64_t streamversion,
                                  int64_t recordedtime_us)
{
    uint8_t *p = rec;
    mt_put_be64(p + 4, sequence);
    mt_put_be64(p + 12, streamversion);
    mt_put_be64(p + 20, (uint64_t) recordedtime_us);
}

mt_err mt_event_record_subject(const void *rec, size_t len, const char **subject,
                               uint64_t *streamversion)
{
    const uint8_t *p = rec;
    *subject = NULL;
    *streamversion = 0;
    if (len < STRINGS_OFF || p[0] != MT_EVENT_FORMAT) {
        return MT_EINVAL;
    }
    size_t off = STRINGS_OFF;
    for (int i = 0; i < MT_ATTR_SUBJECT; i++) {
        uint32_t n = mt_get_be32(p + HEADER_LEN + 4 * i);
        if (n > len - off) {
            return MT_EINVAL;
        }
        off += n;
    }
    uint32_t n = mt_get_be32(p + HEADER_LEN + 4 * MT_ATTR_SUBJECT);
    if (n > 0) {
        if (n > len - off || p[off + n - 1] != '\0') {
            return MT_EINVAL;
        }
        *subject = (const char *) p + off;
    }
    *streamversion = mt_get_be64(p + 12);
    return MT_OK;
}

uint64_t mt_event_record_sequence(const void *rec, size_t len)
{
    return len < HEADER_LEN ? 0 : mt_get_be64((const uint8_t *) rec + 4);
}

/* ---- batches ---- */

void mt_event_batch_init(mt_event_batch *b)
{
    memset(b, 0, sizeof *b);
    mt_buf_init(&b->buf);
}

void mt_event_batch_free(mt_event_batch *b)
{
    for (int i = 0; i < b->count; i++) {
        json_decref(b->data[i]);
    }
    mt_buf_free(&b->buf);
    free(b->off);
    free(b->len);
    free(b->data);
    mt_event_batch_init(b);
}

void mt_event_batch_add(mt_event_batch *b, const mt_event *ev)
{
    if (b->count == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 8;
        b->off = mt_xrealloc(b->off, (size_t) b->cap * sizeof *b->off);
        b->len = mt_xrealloc(b->len, (size_t) b->cap * sizeof *b->len);
        b->data = mt_xrealloc(b->data, (size_t) b->cap * sizeof *b->data);
    }
    size_t start = b->buf.len;
    mt_event_encode(ev, &b->buf);
    b->off[b->count] = start;
    b->len[b->count] = b->buf.len - start;
    b->data[b->count] = NULL;
    b->count++;
}

/* ---- parsing ---- */

/*
 * Where the plain strings of a structured body (names and values whose JSON
 * text is their value) are copied, NUL-terminated. Its capacity is the
 * body's length, which it cannot outgrow: each string takes its length plus
 * one here and its length plus two quotes in the body. It never moves, so
 * attributes point into it until the events are encoded.
 */
typedef struct plain_copies {
    char *buf;
    size_t used, cap;
} plain_copies;

/*
 * What one event's parse collects. The strings its attributes point to are
 * held by 'hold' (jansson values), 'copies' or the caller's request, and
 * live until the event is encoded into the batch.
 */
typedef struct draft {
    mt_event ev;
    json_t *hold;          /* an array keeping parsed values alive, or NULL */
    json_t *ext;           /* extension attributes, or NULL */
    json_t *data;          /* the parsed JSON data (borrowed from 'hold'), or NULL */
    char *ext_text;        /* owned */
    uint8_t *data_owned;   /* decoded data_base64 or text data */
    plain_copies *copies;  /* structured modes; NULL in binary mode */
    int index;             /* the event's place in a batch, or -1 */
    char *err;
    size_t errlen;
    bool have_specversion;
} draft;

/* "" for a single event, "events[3]." in a batch: what errors start with. */
static void draft_prefix(const draft *d, char *buf, size_t len)
{
    if (d->index < 0) {
        buf[0] = '\0';
    } else {
        snprintf(buf, len, "events[%d].", d->index);
    }
}

static mt_err fail(draft *d, const char *attr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static mt_err fail(draft *d, const char *attr, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char prefix[32];
    draft_prefix(d, prefix, sizeof prefix);
    snprintf(d->err, d->errlen, "%s%s%s%s", prefix, attr ? attr : "", attr ? ": " : "", msg);
    return MT_EINVAL;
}

static void draft_init(draft *d, int index, plain_copies *copies, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    mt_event_init(&d->ev);
    d->index = index;
    d->copies = copies;
    d->err = err;
    d->errlen = errlen;
}

/* Keeps 'v' (stolen) alive until the draft is freed. */
static void draft_hold(draft *d, json_t *v)
{
    if (!d->hold) {
        d->hold = json_array();
    }
    json_array_append_new(d->hold, v);
}

static void draft_free(draft *d)
{
    json_decref(d->hold);
    json_decref(d->ext);
    free(d->ext_text);
    free(d->data_owned);
}

/* Adds the record for a structured draft, keeping its parsed JSON data. */
static void batch_add_draft(mt_event_batch *b, const draft *d)
{
    mt_event_batch_add(b, &d->ev);
    b->data[b->count - 1] = json_incref(d->data);
}

bool mt_event_content_type_is_json(const char *ct)
{
    if (!ct) {
        return false;
    }
    size_t n = strcspn(ct, ";");
    while (n > 0 && isspace((unsigned char) ct[n - 1])) {
        n--;
    }
    if ((n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
        (n == 9 && strncasecmp(ct, "text/json", 9) == 0)) {
        return true;
    }
    return n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0 && memchr(ct, '/', n);
}

static bool is_text_type(const char *ct)
{
    return ct && strncasecmp(ct, "text/", 5) == 0;
}

static bool valid_ext_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 20) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(islower((unsigned char) name[i]) || isdigit((unsigned char) name[i]))) {
            return false;
        }
    }
    return true;
}

/* A type is dot-separated non-empty words without wildcards or spaces. */
static bool valid_type(const char *t)
{
    if (*t == '\0' || *t == '.') {
        return false;
    }
    for (const char *p = t; *p; p++) {
        if (*p == '*' || *p == '#' || isspace((unsigned char) *p) ||
            (*p == '.' && (p[1] == '.' || p[1] == '\0'))) {
            return false;
        }
    }
    return true;
}

/*
 * v as quoted in a message, in buf: at most cap - 1 bytes (whole UTF-8
 * characters), each control character as '?', so that one error stays one
 * line in logs and dead letters.
 */
static const char *shown(const char *v, char *buf, size_t cap)
{
    size_t n = mt_diag_cut_at(v, strlen(v), cap - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) v[i];
        buf[i] = c < 0x20 || c == 0x7f ? '?' : (char) c;
    }
    buf[n] = '\0';
    return buf;
}

/*
 * The checks of a string attribute's value, shared by the parsers and
 * mt_event_set_attr: sets *us for the time attributes; on a bad value
 * writes what is wrong (without the attribute's name) to msg.
 */
static mt_err check_string_attr(mt_event_attr a, const char *v, int64_t *us, char *msg,
                                size_t msglen)
{
    size_t n = strlen(v);
    *us = 0;
    if (n > attr_max[a]) {
        snprintf(msg, msglen, "longer than %zu bytes", attr_max[a]);
        return MT_EINVAL;
    }
    if (n == 0 && (a == MT_ATTR_ID || a == MT_ATTR_SOURCE || a == MT_ATTR_TYPE ||
                   a == MT_ATTR_SUBJECT)) {
        snprintf(msg, msglen, "must not be empty");
        return MT_EINVAL;
    }
    char q[128];
    if (a == MT_ATTR_TYPE && !valid_type(v)) {
        snprintf(msg, msglen,
                 "'%s' is not a dot-separated name (no empty words, spaces, '*' or '#')",
                 shown(v, q, sizeof q));
        return MT_EINVAL;
    }
    if ((a == MT_ATTR_TIME || a == MT_ATTR_EXPIRYTIME || a == MT_ATTR_DELIVERAFTER) &&
        mt_time_parse(v, us)) {
        snprintf(msg, msglen, "'%s' is not an RFC 3339 timestamp", shown(v, q, sizeof q));
        return MT_EINVAL;
    }
    if (a == MT_ATTR_REPLYTO && !valid_type(v)) {
        snprintf(msg, msglen, "'%s' is not a topic name", shown(v, q, sizeof q));
        return MT_EINVAL;
    }
    return MT_OK;
}

/* Sets a checked string attribute and the times it carries. */
static void put_string_attr(mt_event *ev, mt_event_attr a, const char *v, int64_t us)
{
    if (a == MT_ATTR_EXPIRYTIME) {
        ev->expiry_us = us ? us : 1;
    } else if (a == MT_ATTR_DELIVERAFTER) {
        ev->deliverafter_us = us ? us : 1;
    }
    ev->attr[a] = v;
}

static mt_err set_string_attr(draft *d, mt_event_attr a, const char *v)
{
    char msg[512];
    int64_t us;
    if (check_string_attr(a, v, &us, msg, sizeof msg)) {
        return fail(d, attr_names[a], "%s", msg);
    }
    put_string_attr(&d->ev, a, v, us);
    return MT_OK;
}

mt_err mt_event_set_attr(mt_event *ev, mt_event_attr a, const char *v, char *err, size_t errlen)
{
    mt_assert(a < MT_ATTR_EXTENSIONS);
    char msg[512];
    int64_t us;
    if (check_string_attr(a, v, &us, msg, sizeof msg)) {
        snprintf(err, errlen, "%s: %s", attr_names[a], msg);
        return MT_EINVAL;
    }
    put_string_attr(ev, a, v, us);
    return MT_OK;
}

/* str: the value if it is a string; v: the value otherwise. */
static mt_err set_priority(draft *d, const char *str, json_t *v)
{
    json_int_t p = -1;
    if (!str && json_is_integer(v)) {
        p = json_integer_value(v);
    } else if (str && isdigit((unsigned char) str[0]) && str[1] == '\0') {
        p = str[0] - '0';
    } else {
        return fail(d, "priority", "must be an integer from 0 to 9");
    }
    if (p < 0 || p > 9) {
        return fail(d, "priority", "%lld is out of range 0-9", (long long) p);
    }
    d->ev.priority = (int) p;
    return MT_OK;
}

static int find_attr(const char *name)
{
    for (int i = 0; i < MT_ATTR_EXTENSIONS; i++) {
        if (strcmp(name, attr_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/*
 * Takes one attribute: 'str' when its value is a string (copied from the
 * body, 'v' then NULL), else the JSON value 'v', which the caller holds.
 */
static mt_err take_attr(draft *d, const char *name, const char *str, json_t *v)
{
    if (!str && json_is_string(v)) {
        str = json_string_value(v);
    }
    if (strcmp(name, "specversion") == 0) {
        if (!str || strcmp(str, "1.0") != 0) {
            return fail(d, "specversion", "must be \"1.0\"");
        }
        d->have_specversion = true;
        return MT_OK;
    }
    if (strcmp(name, "sequence") == 0 || strcmp(name, "streamversion") == 0 ||
        strcmp(name, "recordedtime") == 0) {
        return fail(d, name, "is assigned by the engine and cannot be published");
    }
    if (!str && json_is_null(v)) {
        return MT_OK; /* CloudEvents: a null attribute is an absent one */
    }
    if (strcmp(name, "priority") == 0) {
        return set_priority(d, str, v);
    }
    int a = find_attr(name);
    if (a >= 0) {
        if (!str) {
            return fail(d, name, "must be a string");
        }
        return set_string_attr(d, (mt_event_attr) a, str);
    }
    if (!valid_ext_name(name)) {
        return fail(d, NULL, "'%s' is not a valid attribute name (a-z, 0-9, at most 20)", name);
    }
    if (!str && !(json_is_integer(v) || json_is_boolean(v))) {
        return fail(d, name, "an extension attribute must be a string, integer or boolean");
    }
    if (str && (v ? json_string_length(v) : strlen(str)) > MT_EVENT_MAX_ATTR) {
        return fail(d, name, "longer than %d bytes", MT_EVENT_MAX_ATTR);
    }
    if (!d->ext) {
        d->ext = json_object();
    }
    json_object_set_new(d->ext, name, v ? json_incref(v) : json_string(str));
    return MT_OK;
}

static mt_err decode_base64(draft *d, const char *s)
{
    size_t n = strlen(s);
    if (n % 4 != 0) {
        return fail(d, "data_base64", "is not valid base64 (length %zu is not a multiple of 4)", n);
    }
    /* '=' may only pad the end: one or two of them, in the last quantum. */
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=' && !(i >= n - 2 && (i == n - 1 || s[n - 1] == '='))) {
            return fail(d, "data_base64", "is not valid base64");
        }
    }
    uint8_t *out = mt_trymalloc(n / 4 * 3 + 1);
    if (!out) {
        return MT_ENOMEM;
    }
    int got = n ? EVP_DecodeBlock(out, (const unsigned char *) s, (int) n) : 0;
    if (got < 0) {
        free(out);
        return fail(d, "data_base64", "is not valid base64");
    }
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    size_t len = (size_t) got;
    for (size_t i = n; i > 0 && s[i - 1] == '=' && len > 0; i--) {
        len--;
    }
    d->data_owned = out;
    d->ev.data = out;
    d->ev.data_len = len;
    d->ev.data_kind = MT_DATA_BINARY;
    return MT_OK;
}

/* Checks required attributes and fills the extensions text once all are in. */
static mt_err finish(draft *d)
{
    if (!d->have_specversion) {
        return fail(d, "specversion", "required attribute is missing");
    }
    static const mt_event_attr required[] = {MT_ATTR_ID, MT_ATTR_SOURCE, MT_ATTR_TYPE};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (!d->ev.attr[required[i]]) {
            return fail(d, attr_names[required[i]], "required attribute is missing");
        }
    }
    if (d->ext) {
        d->ext_text = json_dumps(d->ext, JSON_COMPACT | JSON_PRESERVE_ORDER);
        mt_assert(d->ext_text);
        if (strlen(d->ext_text) > attr_max[MT_ATTR_EXTENSIONS]) {
            return fail(d, NULL, "extension attributes take more than %zu bytes",
                        attr_max[MT_ATTR_EXTENSIONS]);
        }
        d->ev.attr[MT_ATTR_EXTENSIONS] = d->ext_text;
    }
    return MT_OK;
}

/* ---- structured JSON walking ---- */

static size_t skip_ws(const char *s, size_t len, size_t pos)
{
    while (pos < len && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r')) {
        pos++;
    }
    return pos;
}

/*
 * Parses one JSON value at s[*pos] with jansson, advancing *pos past it.
 * Returns the value (new reference), or NULL with the error in the draft:
 * 'name' is the member whose value it is, NULL for a member's name. A
 * NUL (\u0000) is taken only in data: no attribute or name can hold one.
 */
static json_t *load_value(draft *d, const char *s, size_t len, size_t *pos, const char *name)
{
    json_error_t e;
    size_t flags = JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY;
    if (name && strcmp(name, "data") == 0) {
        flags |= JSON_ALLOW_NUL;
    }
    json_t *v = json_loadb(s + *pos, len - *pos, flags, &e);
    if (!v) {
        char prefix[32], where[80];
        draft_prefix(d, prefix, sizeof prefix);
        if (name) {
            snprintf(where, sizeof where, "%s%.40s", prefix, name);
        } else { /* "an attribute name in events[3]" */
            size_t n = strlen(prefix);
            snprintf(where, sizeof where, "an attribute name%s%.*s", n ? " in " : "",
                     n ? (int) n - 1 : 0, prefix);
        }
        bool nul = json_error_code(&e) == json_error_null_character;
        snprintf(d->err, d->errlen, "%s: %s at byte %zu%s%s", where,
                 nul ? "a NUL character (\\u0000)" : "malformed JSON",
                 *pos + (size_t) (e.position > 0 ? e.position : 0),
                 nul ? ", which only strings in data may hold" : ": ",
                 nul ? "" : e.text);
        return NULL;
    }
    *pos += (size_t) e.position;
    return v;
}

/*
 * If the JSON string opening at s[p] is plain (printable ASCII without '"'
 * or '\\', so its text is its value) returns the place of its closing
 * quote; else 0, and jansson parses it. Most names and attribute values are
 * plain, and copying them costs far less than a jansson parse each.
 */
static size_t plain_string_end(const char *s, size_t len, size_t p)
{
    for (size_t q = p + 1; q < len; q++) {
        unsigned char c = (unsigned char) s[q];
        if (c == '"') {
            return q;
        }
        if (c < 0x20 || c >= 0x7f || c == '\\') {
            return 0;
        }
    }
    return 0;
}

/* Copies the plain string between the quotes at s[p] and s[q]. */
static const char *copy_plain(draft *d, const char *s, size_t p, size_t q)
{
    plain_copies *c = d->copies;
    size_t n = q - p - 1;
    mt_assert(c->used + n + 1 <= c->cap);
    char *out = c->buf + c->used;
    memcpy(out, s + p + 1, n);
    out[n] = '\0';
    c->used += n + 1;
    return out;
}

/*
 * The member names of one event seen so far: the first few in an array,
 * any more in a jansson object, so an event of many extensions is not
 * checked in quadratic time.
 */
#define SEEN_INLINE 24

typedef struct seen_names {
    const char *name[SEEN_INLINE];
    int n;
    json_t *more;
} seen_names;

/* Adds 'name'; returns true if it was there already. */
static bool seen_add(seen_names *seen, const char *name)
{
    for (int i = 0; i < seen->n; i++) {
        if (strcmp(seen->name[i], name) == 0) {
            return true;
        }
    }
    if (seen->more && json_object_get(seen->more, name)) {
        return true;
    }
    if (seen->n < SEEN_INLINE) {
        seen->name[seen->n++] = name;
        return false;
    }
    if (!seen->more) {
        seen->more = json_object();
    }
    json_object_set_new(seen->more, name, json_true());
    return false;
}

/*
 * Walks one event object at s[*pos], feeding each member to the draft.
 * 'data' keeps its raw text span.
 */
static mt_err walk_event(const char *s, size_t len, size_t *pos, draft *d)
{
    size_t p = skip_ws(s, len, *pos);
    if (p >= len || s[p] != '{') {
        return fail(d, NULL, "expected a JSON object at byte %zu", p);
    }
    p = skip_ws(s, len, p + 1);
    seen_names seen = {.n = 0};
    mt_err rc = MT_OK;
    bool first = true;
    const char *data_ct = NULL;
    json_t *data_val = NULL;
    size_t data_start = 0, data_end = 0;
    const char *data_b64 = NULL;
    while (rc == MT_OK) {
        if (p < len && s[p] == '}' && first) {
            p++;
            break;
        }
        if (p >= len || s[p] != '"') {
            rc = fail(d, NULL, "malformed JSON at byte %zu: expected an attribute name", p);
            break;
        }
        const char *name;
        size_t q = plain_string_end(s, len, p);
        if (q) {
            name = copy_plain(d, s, p, q);
            p = q + 1;
        } else {
            json_t *key = load_value(d, s, len, &p, NULL);
            if (!key) {
                rc = MT_EINVAL;
                break;
            }
            draft_hold(d, key);
            name = json_string_value(key);
        }
        p = skip_ws(s, len, p);
        if (p >= len || s[p] != ':') {
            rc = fail(d, NULL, "malformed JSON at byte %zu: expected ':'", p);
            break;
        }
        p = skip_ws(s, len, p + 1);
        size_t vstart = p;
        bool is_data = strcmp(name, "data") == 0;
        const char *str = NULL;
        json_t *v = NULL;
        q = !is_data && p < len && s[p] == '"' ? plain_string_end(s, len, p) : 0;
        if (q) {
            str = copy_plain(d, s, p, q);
            p = q + 1;
        } else {
            v = load_value(d, s, len, &p, name);
            if (!v) {
                rc = MT_EINVAL;
                break;
            }
            draft_hold(d, v);
        }
        if (seen_add(&seen, name)) {
            rc = fail(d, name, "attribute appears twice");
            break;
        }
        if (is_data) {
            data_val = v;
            data_start = vstart;
            data_end = p;
        } else if (strcmp(name, "data_base64") == 0) {
            if (!str && !json_is_string(v)) {
                rc = fail(d, name, "must be a base64 string");
                break;
            }
            data_b64 = str ? str : json_string_value(v);
        } else {
            rc = take_attr(d, name, str, v);
            if (rc == MT_OK && strcmp(name, "datacontenttype") == 0) {
                data_ct = d->ev.attr[MT_ATTR_DATACONTENTTYPE];
            }
        }
        first = false;
        p = skip_ws(s, len, p);
        if (p < len && s[p] == ',') {
            p = skip_ws(s, len, p + 1);
            continue;
        }
        if (p < len && s[p] == '}') {
            p++;
            break;
        }
        rc = fail(d, NULL, "malformed JSON at byte %zu: expected ',' or '}'", p);
    }
    json_decref(seen.more);
    if (rc) {
        return rc;
    }
    *pos = p;
    if (data_val && data_b64) {
        return fail(d, NULL, "'data' and 'data_base64' are mutually exclusive");
    }
    if (data_b64) {
        rc = decode_base64(d, data_b64);
    } else if (data_val && !json_is_null(data_val)) {
        if (json_is_string(data_val) && data_ct && !mt_event_content_type_is_json(data_ct)) {
            d->ev.data_kind = MT_DATA_TEXT;
            d->ev.data = (const uint8_t *) json_string_value(data_val);
            d->ev.data_len = json_string_length(data_val);
        } else {
            d->ev.data_kind = MT_DATA_JSON;
            d->ev.data = (const uint8_t *) s + data_start;
            d->ev.data_len = data_end - data_start;
            d->data = data_val;
        }
    }
    return rc ? rc : finish(d);
}

static mt_err trailing_check(const char *s, size_t len, size_t pos, char *err, size_t errlen)
{
    pos = skip_ws(s, len, pos);
    if (pos != len) {
        snprintf(err, errlen, "malformed JSON at byte %zu: unexpected data after the end", pos);
        return MT_EINVAL;
    }
    return MT_OK;
}

mt_err mt_event_parse_structured(const char *body, size_t len, mt_event_batch *b, char *err,
                                 size_t errlen)
{
    plain_copies copies = {mt_trymalloc(len + 1), 0, len + 1};
    if (!copies.buf) {
        return MT_ENOMEM;
    }
    draft d;
    draft_init(&d, -1, &copies, err, errlen);
    size_t pos = 0;
    mt_err rc = walk_event(body, len, &pos, &d);
    if (rc == MT_OK) {
        rc = trailing_check(body, len, pos, err, errlen);
    }
    if (rc == MT_OK) {
        batch_add_draft(b, &d);
    }
    draft_free(&d);
    free(copies.buf);
    return rc;
}

mt_err mt_event_parse_batch(const char *body, size_t len, mt_event_batch *b, char *err,
                            size_t errlen)
{
    size_t p = skip_ws(body, len, 0);
    if (p >= len || body[p] != '[') {
        snprintf(err, errlen, "a batch must be a JSON array of events");
        return MT_EINVAL;
    }
    p = skip_ws(body, len, p + 1);
    if (p < len && body[p] == ']') {
        snprintf(err, errlen, "the batch is empty");
        return MT_EINVAL;
    }
    plain_copies copies = {mt_trymalloc(len + 1), 0, len + 1};
    if (!copies.buf) {
        return MT_ENOMEM;
    }
    mt_err rc;
    for (int i = 0;; i++) {
        draft d;
        draft_init(&d, i, &copies, err, errlen);
        rc = walk_event(body, len, &p, &d);
        if (rc == MT_OK) {
            batch_add_draft(b, &d);
        }
        draft_free(&d);
        copies.used = 0; /* the event is encoded: its strings are no longer needed */
        if (rc) {
            break;
        }
        p = skip_ws(body, len, p);
        if (p < len && body[p] == ',') {
            p++;
            continue;
        }
        if (p < len && body[p] == ']') {
            rc = trailing_check(body, len, p + 1, err, errlen);
            break;
        }
        snprintf(err, errlen, "malformed JSON at byte %zu: expected ',' or ']' after events[%d]",
                 p, i);
        rc = MT_EINVAL;
        break;
    }
    free(copies.buf);
    return rc;
}

mt_err mt_event_parse_binary(const char *const *names, const char *const *values, int n,
                             const char *content_type, const char *body, size_t len,
                             mt_event_batch *b, char *err, size_t errlen)
{
    draft d;
    draft_init(&d, -1, NULL, err, errlen);
    mt_err rc = MT_OK;
    for (int i = 0; i < n && rc == MT_OK; i++) {
        if (strcmp(names[i], "datacontenttype") == 0 || strcmp(names[i], "data") == 0 ||
            strcmp(names[i], "data_base64") == 0) {
            rc = fail(&d, names[i], "is not a header attribute in binary mode");
            break;
        }
        for (int k = 0; k < i && rc == MT_OK; k++) {
            if (strcmp(names[k], names[i]) == 0) {
                /* as in structured mode: which one would be meant? */
                rc = fail(&d, names[i], "header appears twice");
            }
        }
        if (rc) {
            break;
        }
        json_t *v = json_string(values[i]);
        if (!v) {
            rc = fail(&d, names[i], "header value is not valid UTF-8");
            break;
        }
        draft_hold(&d, v);
        rc = take_attr(&d, names[i], NULL, v);
    }
    if (rc == MT_OK && content_type) {
        json_t *v = json_string(content_type);
        if (v) {
            draft_hold(&d, v);
            rc = take_attr(&d, "datacontenttype", NULL, v);
        } else {
            rc = fail(&d, "Content-Type", "not UTF-8");
        }
    }
    if (rc == MT_OK && len > 0) {
        d.ev.data = (const uint8_t *) body;
        d.ev.data_len = len;
        if (mt_event_content_type_is_json(content_type)) {
            json_error_t e;
            json_t *v = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
            if (!v) {
                rc = fail(&d, "data", "malformed JSON at byte %d: %s", e.position, e.text);
            }
            json_decref(v);
            d.ev.data_kind = MT_DATA_JSON;
        } else if (is_text_type(content_type)) {
            d.ev.data_kind = MT_DATA_TEXT;
        } else {
            d.ev.data_kind = MT_DATA_BINARY;
        }
    }
    if (rc == MT_OK) {
        rc = finish(&d);
    }
    if (rc == MT_OK) {
        mt_event_batch_add(b, &d.ev);
    }
    draft_free(&d);
    return rc;
}

/* ---- JSON output ---- */

/* Appends 'v' as compact JSON (any value). */
static void add_json_value(mt_buf *out, const json_t *v)
{
    size_t need = json_dumpb(v, NULL, 0, JSON_ENCODE_ANY | JSON_COMPACT);
    mt_buf_reserve(out, need);
    out->len += json_dumpb(v, out->data + out->len, need, JSON_ENCODE_ANY | JSON_COMPACT);
}

bool mt_event_json_string(mt_buf *out, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\') {
        i++;
    }
    if (i == n) {
        mt_buf_reserve(out, n + 2);
        out->data[out->len++] = '"';
        memcpy(out->data + out->len, s, n);
        out->len += n;
        out->data[out->len++] = '"';
        return true;
    }
    json_t *v = json_stringn(s, n);
    if (!v) {
        return false;
    }
    add_json_value(out, v);
    json_decref(v);
    return true;
}

/* Appends ',"name":'. */
static void add_key(mt_buf *out, const char *name)
{
    mt_buf_add(out, ",", 1);
    mt_event_json_string(out, name, strlen(name));
    mt_buf_add(out, ":", 1);
}

/* Whether an extension named 'name' would repeat a member the engine writes itself. */
static bool engine_member(const char *name)
{
    static const char *const own[] = {"specversion", "priority", "sequence", "streamversion",
                                      "recordedtime", "data", "data_base64"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        if (strcmp(name, own[i]) == 0) {
            return true;
        }
    }
    return find_attr(name) >= 0;
}

/*
 * The structured CloudEvent, compact, members in a fixed order: specversion,
 * the attributes, priority, extensions, sequence, streamversion,
 * recordedtime, then data (JSON data byte for byte as published) or
 * data_base64. Written member by member rather than through a jansson
 * object: this runs for every event a reader, stream or consumer is sent.
 */
void mt_event_to_json(const mt_event *ev, mt_buf *out)
{
    mt_buf_adds(out, "{\"specversion\":\"1.0\"");
    for (int i = 0; i < MT_ATTR_EXTENSIONS; i++) {
        if (ev->attr[i]) {
            size_t mark = out->len;
            add_key(out, attr_names[i]);
            if (!mt_event_json_string(out, ev->attr[i], strlen(ev->attr[i]))) {
                out->len = mark; /* not UTF-8: left out */
            }
        }
    }
    if (ev->priority >= 0) {
        mt_buf_adds(out, ",\"priority\":");
        mt_buf_add_u64(out, (uint64_t) ev->priority);
    }
    if (ev->attr[MT_ATTR_EXTENSIONS]) {
        json_t *ext = json_loads(ev->attr[MT_ATTR_EXTENSIONS], 0, NULL);
        const char *name;
        json_t *v;
        json_object_foreach(ext, name, v) {
            if (engine_member(name)) {
                continue;
            }
            add_key(out, name);
            add_json_value(out, v);
        }
        json_decref(ext);
    }
    mt_buf_adds(out, ",\"sequence\":\"");
    mt_buf_add_u64(out, ev->sequence);
    mt_buf_add(out, "\"", 1);
    if (ev->attr[MT_ATTR_SUBJECT]) {
        mt_buf_adds(out, ",\"streamversion\":");
        mt_buf_add_u64(out, ev->streamversion);
    }
    mt_buf_adds(out, ",\"recordedtime\":\"");
    char ts[40];
    mt_time_format_us(ev->recordedtime_us, ts, sizeof ts);
    mt_buf_adds(out, ts);
    mt_buf_add(out, "\"", 1);

    mt_data_kind kind = ev->data_kind;
    if (kind == MT_DATA_JSON) {
        mt_buf_adds(out, ",\"data\":");
        mt_buf_add(out, ev->data, ev->data_len);
    } else if (kind == MT_DATA_TEXT) {
        size_t mark = out->len;
        mt_buf_adds(out, ",\"data\":");
        if (!mt_event_json_string(out, (const char *) ev->data, ev->data_len)) {
            out->len = mark;
            kind = MT_DATA_BINARY; /* not UTF-8: only base64 can carry it */
        }
    }
    if (kind == MT_DATA_BINARY) {
        size_t n = 4 * ((ev->data_len + 2) / 3);
        mt_buf_adds(out, ",\"data_base64\":\"");
        mt_buf_reserve(out, n + 1);
        EVP_EncodeBlock((unsigned char *) out->data + out->len, ev->data, (int) ev->data_len);
        out->len += n;
        mt_buf_add(out, "\"", 1);
    }
    mt_buf_add(out, "}", 1);
}

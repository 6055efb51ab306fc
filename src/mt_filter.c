#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_filter.h"
#include "mt_mem.h"
#include "mt_util.h"

typedef enum kind { F_EXACT, F_PREFIX, F_SUFFIX, F_ALL, F_ANY, F_NOT, F_NKINDS } kind;

static const char *const dialects[F_NKINDS] = {"exact", "prefix", "suffix", "all", "any", "not"};

/* Where a condition finds its attribute; resolved once, at compile time. */
typedef enum source {
    SRC_ATTR,        /* ev->attr[attr] */
    SRC_PRIORITY,    /* ev->priority, as a decimal */
    SRC_SPECVERSION, /* always "1.0" */
    SRC_EXT,         /* a key of the extension object */
    SRC_DATA         /* a path into JSON data */
} source;

typedef struct cond {
    source src;
    mt_event_attr attr; /* SRC_ATTR only */
    char *name;         /* owned; SRC_EXT: the key; SRC_DATA: the path words, NUL-separated */
    int npath;          /* SRC_DATA: words in name */
    char *value;        /* owned; what the attribute's text is compared with */
    size_t value_len;   /* bytes in value (a JSON string may hold NULs) */
} cond;

struct mt_filter {
    kind k;
    cond *conds;      /* owned, nconds of them; exact/prefix/suffix */
    int nconds;
    mt_filter **kids; /* owned, nkids of them; all/any (>= 1), not (1) */
    int nkids;
};

void mt_filter_free(mt_filter *f)
{
    if (!f) {
        return;
    }
    for (int i = 0; i < f->nconds; i++) {
        free(f->conds[i].name);
        free(f->conds[i].value);
    }
    free(f->conds);
    for (int i = 0; i < f->nkids; i++) {
        mt_filter_free(f->kids[i]);
    }
    free(f->kids);
    free(f);
}

/* ---- compiling ---- */

typedef struct compiler {
    char *err;       /* caller's buffer, errlen bytes; may be NULL when errlen is 0 */
    size_t errlen;
    char path[512];  /* where we are, "all[1].prefix" ("" at the top); truncated if absurdly deep */
    size_t plen;     /* strlen(path) */
    const json_t *at; /* the value at fault, once fail() has been called */
    bool at_key;      /* the fault is the key naming 'at', not 'at' itself */
} compiler;

static mt_err fail(compiler *c, const json_t *at, bool key, mt_err rc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Records the error and where it is: 'at', or the key naming 'at' when 'key' is set. */
static mt_err fail(compiler *c, const json_t *at, bool key, mt_err rc, const char *fmt, ...)
{
    c->at = at;
    c->at_key = key;
    if (c->errlen == 0) {
        return rc;
    }
    int n = c->plen ? snprintf(c->err, c->errlen, "%s: ", c->path) : 0;
    if (n >= 0 && (size_t) n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t) n, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Appends a segment to the path; returns the old length for pop(). */
static size_t push(compiler *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static size_t push(compiler *c, const char *fmt, ...)
{
    size_t old = c->plen;
    if (old > 0 && fmt[0] == '%' && old + 1 < sizeof c->path) {
        /* A key after something: "exact" then ".subject"; a key at the top stands alone. */
        c->path[old] = '.';
        c->path[old + 1] = '\0';
        old++;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->path + old, sizeof c->path - old, fmt, ap);
    va_end(ap);
    size_t was = c->plen;
    c->plen = strlen(c->path);
    return was;
}

static void pop(compiler *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

static mt_err oom(compiler *c)
{
    snprintf(c->err, c->errlen, "out of memory");
    return MT_ENOMEM;
}

static char *trydup(const char *s, size_t n)
{
    char *p = mt_trymalloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

/* The CloudEvents rule for attribute names, which mt_event enforces on extensions. */
static bool valid_attr_name(const char *name, size_t n)
{
    if (n == 0 || n > 20) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9'))) {
            return false;
        }
    }
    return true;
}

/* Resolves the attribute 'name' (n bytes) into k->src and friends. */
static mt_err compile_attr(compiler *c, const char *name, size_t n, const json_t *val, cond *k)
{
    if (n >= 4 && memcmp(name, "data", 4) == 0 && (n == 4 || name[4] == '.')) {
        if (n <= 5) {
            return fail(c, val, true, MT_EINVAL, "'data' needs a path: data.<key>[.<key>...]");
        }
        const char *path = name + 5;
        size_t plen = n - 5;
        if (memchr(path, '\0', plen)) {
            return fail(c, val, true, MT_EINVAL, "the data path holds a NUL byte");
        }
        if (path[0] == '.' || path[plen - 1] == '.' || strstr(path, "..")) {
            return fail(c, val, true, MT_EINVAL, "the data path has an empty word");
        }
        k->name = trydup(path, plen);
        if (!k->name) {
            return oom(c);
        }
        k->npath = 1;
        for (char *p = k->name; *p; p++) {
            if (*p == '.') {
                *p = '\0';
                k->npath++;
            }
        }
        k->src = SRC_DATA;
        return MT_OK;
    }
    if (memchr(name, '\0', n)) {
        return fail(c, val, true, MT_EINVAL, "the attribute name holds a NUL byte");
    }
    if (!valid_attr_name(name, n)) {
        return fail(c, val, true, MT_EINVAL, "not an attribute name (a-z and 0-9, at most 20 bytes) "
                    "nor data.<path>");
    }
    if (strcmp(name, "sequence") == 0 || strcmp(name, "streamversion") == 0 ||
        strcmp(name, "recordedtime") == 0) {
        return fail(c, val, true, MT_EINVAL, "is assigned by the engine and cannot be filtered on");
    }
    if (strcmp(name, "specversion") == 0) {
        k->src = SRC_SPECVERSION;
        return MT_OK;
    }
    if (strcmp(name, "priority") == 0) {
        k->src = SRC_PRIORITY;
        return MT_OK;
    }
    for (int i = 0; i < MT_ATTR_EXTENSIONS; i++) {
        if (strcmp(name, mt_event_attr_name((mt_event_attr) i)) == 0) {
            k->src = SRC_ATTR;
            k->attr = (mt_event_attr) i;
            return MT_OK;
        }
    }
    k->name = trydup(name, n);
    if (!k->name) {
        return oom(c);
    }
    k->src = SRC_EXT;
    return MT_OK;
}

/* Fills 'k' from one "attribute": "value" pair; on failure 'k' owns nothing. */
static mt_err compile_cond(compiler *c, const char *name, size_t n, const json_t *val, cond *k)
{
    memset(k, 0, sizeof *k);
    if (!json_is_string(val)) {
        return fail(c, val, false, MT_EINVAL, "expects a string, not %s", json_kind(val));
    }
    mt_err rc = compile_attr(c, name, n, val, k);
    if (!rc && k->src != SRC_DATA && memchr(json_string_value(val), '\0',
                                            json_string_length(val))) {
        /* Only JSON data holds strings with NUL: the engine refuses it in attributes. */
        rc = fail(c, val, false, MT_EINVAL, "holds a NUL byte, which no attribute can hold "
                  "(only strings in data can)");
    }
    if (!rc) {
        k->value_len = json_string_length(val);
        k->value = trydup(json_string_value(val), k->value_len);
        rc = k->value ? MT_OK : oom(c);
    }
    if (rc) {
        free(k->name);
        k->name = NULL;
    }
    return rc;
}

static mt_err compile_conds(compiler *c, mt_filter *f, const json_t *v)
{
    if (!json_is_object(v) || json_object_size(v) == 0) {
        return fail(c, v, false, MT_EINVAL, "expects an object of attribute: string");
    }
    f->conds = mt_trymalloc(json_object_size(v) * sizeof *f->conds);
    if (!f->conds) {
        return oom(c);
    }
    const char *name;
    json_t *val;
    json_object_foreach((json_t *) v, name, val) {
        size_t n = mt_json_key_len(name);
        size_t old = push(c, "%s", name);
        mt_err rc = compile_cond(c, name, n, val, &f->conds[f->nconds]);
        pop(c, old);
        if (rc) {
            return rc;
        }
        f->nconds++;
    }
    return MT_OK;
}

static mt_err compile_expr(compiler *c, const json_t *spec, int level, mt_filter **out);

static mt_err compile_kids(compiler *c, mt_filter *f, const json_t *v, int level)
{
    if (f->k == F_NOT) {
        f->kids = mt_trymalloc(sizeof *f->kids);
        if (!f->kids) {
            return oom(c);
        }
        mt_err rc = compile_expr(c, v, level + 1, &f->kids[0]);
        if (!rc) {
            f->nkids = 1;
        }
        return rc;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        return fail(c, v, false, MT_EINVAL, "expects a non-empty list of filters");
    }
    f->kids = mt_trymalloc(json_array_size(v) * sizeof *f->kids);
    if (!f->kids) {
        return oom(c);
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        size_t old = push(c, "[%zu]", i);
        mt_err rc = compile_expr(c, json_array_get(v, i), level + 1, &f->kids[i]);
        pop(c, old);
        if (rc) {
            return rc;
        }
        f->nkids++;
    }
    return MT_OK;
}

static mt_err compile_expr(compiler *c, const json_t *spec, int level, mt_filter **out)
{
    *out = NULL;
    if (level > MT_FILTER_MAX_DEPTH) {
        return fail(c, spec, false, MT_EINVAL, "filters nested more than %d deep", MT_FILTER_MAX_DEPTH);
    }
    if (!json_is_object(spec)) {
        return fail(c, spec, false, MT_EINVAL, "expects a filter: an object with one of exact, prefix, "
                    "suffix, all, any or not");
    }
    if (json_object_size(spec) != 1) {
        return fail(c, spec, false, MT_EINVAL, "expects exactly one of exact, prefix, suffix, all, any or "
                    "not (got %zu keys)", json_object_size(spec));
    }
    void *it = json_object_iter((json_t *) spec);
    const char *name = json_object_iter_key(it);
    const json_t *v = json_object_iter_value(it);
    size_t n = mt_json_key_len(name);
    if (memchr(name, '\0', n)) {
        return fail(c, v, true, MT_EINVAL, "a dialect name cannot hold a NUL byte (expected "
                    "exact, prefix, suffix, all, any or not)");
    }
    int k = 0;
    while (k < F_NKINDS && strcmp(dialects[k], name) != 0) {
        k++;
    }
    if (k == F_NKINDS) {
        if (strcmp(name, "sql") == 0) {
            return fail(c, v, true, MT_EINVAL, "the sql dialect is not supported (use exact, prefix, "
                        "suffix, all, any or not)");
        }
        return fail(c, v, true, MT_EINVAL, "unknown dialect '%.40s' (expected exact, prefix, suffix, "
                    "all, any or not)", name);
    }
    mt_filter *f = mt_trymalloc(sizeof *f);
    if (!f) {
        return oom(c);
    }
    memset(f, 0, sizeof *f);
    f->k = (kind) k;
    size_t old = push(c, "%s", name);
    mt_err rc = f->k <= F_SUFFIX ? compile_conds(c, f, v) : compile_kids(c, f, v, level);
    pop(c, old);
    if (rc) {
        mt_filter_free(f);
        return rc;
    }
    *out = f;
    return MT_OK;
}

mt_err mt_filter_compile(const json_t *spec, mt_filter **out, char *err, size_t errlen)
{
    return mt_filter_compile_at(spec, out, err, errlen, NULL, NULL);
}

mt_err mt_filter_compile_at(const json_t *spec, mt_filter **out, char *err, size_t errlen,
                            const json_t **at, bool *at_key)
{
    mt_assert(out != NULL);
    *out = NULL;
    compiler c = {.err = err, .errlen = err ? errlen : 0, .path = "", .plen = 0};
    if (c.errlen) {
        err[0] = '\0';
    }
    mt_err rc = compile_expr(&c, spec, 1, out);
    if (at) {
        *at = rc ? c.at : NULL;
    }
    if (at_key) {
        *at_key = rc && c.at_key;
    }
    return rc;
}

/* ---- evaluation ---- */

/*
 * Per-evaluation state, on the caller's stack: the filter itself is never
 * written, which is what makes concurrent evaluation safe.
 */
typedef struct eval_ctx {
    const mt_event *ev;
    json_t *data;     /* owned; the parsed data, NULL if absent or not JSON */
    json_t *ext;      /* owned; the parsed extension object, NULL if none */
    bool data_parsed; /* the data has been tried: parse at most once */
    bool ext_parsed;  /* likewise the extension object */
} eval_ctx;

typedef struct text {
    const char *s;
    size_t n;
} text;

#define NUM_TEXT MT_FILTER_TEXT_MAX

/*
 * A double as Python's repr() writes it: the fewest significant digits
 * that read back as the same double, in fixed notation when the decimal
 * exponent is in [-4, 16) (always with a fraction, "3.0"), otherwise as
 * d.ddde+XX. A fixed, documented form is what filter authors can match.
 */
static void real_text(double d, char *buf, size_t len)
{
    if (!isfinite(d)) {
        /* jansson never produces these; keep the digit walk below honest anyway. */
        snprintf(buf, len, "%s", isnan(d) ? "nan" : d < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, d);
        if (strtod(e, NULL) == d) {
            break;
        }
    }
    const char *s = e;
    size_t w = 0;
    if (*s == '-') {
        buf[w++] = '-';
        s++;
    }
    char digits[20];
    int nd = 0;
    for (; *s && *s != 'e'; s++) {
        if (isdigit((unsigned char) *s) && nd < (int) sizeof digits) {
            digits[nd++] = *s;
        }
    }
    int exp = *s == 'e' ? atoi(s + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    /* At most 1 + 17 digits + 15 zeros + ".0" or "0.000" + 17: well within len. */
    if (exp >= 16 || exp < -4) {
        buf[w++] = digits[0];
        if (nd > 1) {
            buf[w++] = '.';
            memcpy(buf + w, digits + 1, (size_t) nd - 1);
            w += (size_t) nd - 1;
        }
        snprintf(buf + w, len - w, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        return;
    }
    if (exp < 0) {
        memcpy(buf + w, "0.", 2);
        w += 2;
        for (int i = 0; i < -exp - 1; i++) {
            buf[w++] = '0';
        }
        memcpy(buf + w, digits, (size_t) nd);
        w += (size_t) nd;
    } else {
        for (int i = 0; i <= exp; i++) {
            buf[w++] = i < nd ? digits[i] : '0';
        }
        buf[w++] = '.';
        if (nd > exp + 1) {
            memcpy(buf + w, digits + exp + 1, (size_t) (nd - exp - 1));
            w += (size_t) (nd - exp - 1);
        } else {
            buf[w++] = '0';
        }
    }
    buf[w] = '\0';
}

/* The text of a JSON scalar (see the header); false for null, objects, arrays. */
static bool json_text(const json_t *v, char *buf, text *out)
{
    if (!v) {
        return false;
    }
    switch (json_typeof(v)) {
    case JSON_STRING:
        out->s = json_string_value(v);
        out->n = json_string_length(v);
        return true;
    case JSON_INTEGER:
        snprintf(buf, NUM_TEXT, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        real_text(json_real_value(v), buf, NUM_TEXT);
        break;
    case JSON_TRUE:
        out->s = "true";
        out->n = 4;
        return true;
    case JSON_FALSE:
        out->s = "false";
        out->n = 5;
        return true;
    default:
        return false;
    }
    out->s = buf;
    out->n = strlen(buf);
    return true;
}

bool mt_filter_number_text(const json_t *v, char *buf)
{
    text t;
    if (!json_is_number(v) && !json_is_boolean(v)) {
        return false;
    }
    json_text(v, buf, &t);
    if (t.s != buf) {
        memcpy(buf, t.s, t.n + 1);
    }
    return true;
}

/* A decimal array index without sign or leading zeros; sets *idx. */
static bool array_index(const char *w, size_t *idx)
{
    size_t n = strlen(w);
    if (n == 0 || n > 9 || (w[0] == '0' && n > 1)) {
        return false;
    }
    size_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] < '0' || w[i] > '9') {
            return false;
        }
        v = v * 10 + (size_t) (w[i] - '0');
    }
    *idx = v;
    return true;
}

static const json_t *data_lookup(eval_ctx *c, const cond *k)
{
    const mt_event *ev = c->ev;
    if (!c->data_parsed) {
        c->data_parsed = true;
        if (ev->data_kind == MT_DATA_JSON && ev->data) {
            c->data = json_loadb((const char *) ev->data, ev->data_len,
                                 JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        }
    }
    const json_t *v = c->data;
    const char *w = k->name;
    for (int i = 0; i < k->npath && v; i++) {
        size_t idx;
        if (json_is_object(v)) {
            v = json_object_get(v, w);
        } else if (json_is_array(v) && array_index(w, &idx)) {
            v = json_array_get(v, idx);
        } else {
            v = NULL;
        }
        w += strlen(w) + 1;
    }
    return v;
}

/* The text of the condition's attribute on this event; false if it has none. */
static bool attr_text(eval_ctx *c, const cond *k, char *buf, text *out)
{
    const mt_event *ev = c->ev;
    switch (k->src) {
    case SRC_ATTR:
        if (!ev->attr[k->attr]) {
            return false;
        }
        out->s = ev->attr[k->attr];
        out->n = strlen(out->s);
        return true;
    case SRC_SPECVERSION:
        out->s = "1.0";
        out->n = 3;
        return true;
    case SRC_PRIORITY:
        if (ev->priority < 0) {
            return false;
        }
        snprintf(buf, NUM_TEXT, "%d", ev->priority);
        out->s = buf;
        out->n = strlen(buf);
        return true;
    case SRC_EXT:
        if (!c->ext_parsed) {
            c->ext_parsed = true;
            if (ev->attr[MT_ATTR_EXTENSIONS]) {
                c->ext = json_loads(ev->attr[MT_ATTR_EXTENSIONS], 0, NULL);
            }
        }
        /* json_object_get() is NULL for a NULL or non-object ext. */
        return json_text(json_object_get(c->ext, k->name), buf, out);
    case SRC_DATA:
        return json_text(data_lookup(c, k), buf, out);
    }
    return false;
}

static bool eval(const mt_filter *f, eval_ctx *c)
{
    switch (f->k) {
    case F_EXACT:
    case F_PREFIX:
    case F_SUFFIX:
        for (int i = 0; i < f->nconds; i++) {
            const cond *k = &f->conds[i];
            char buf[NUM_TEXT];
            text have;
            if (!attr_text(c, k, buf, &have) || have.n < k->value_len) {
                return false;
            }
            const char *at = f->k == F_SUFFIX ? have.s + (have.n - k->value_len) : have.s;
            if ((f->k == F_EXACT && have.n != k->value_len) ||
                memcmp(at, k->value, k->value_len) != 0) {
                return false;
            }
        }
        return true;
    case F_ALL:
        for (int i = 0; i < f->nkids; i++) {
            if (!eval(f->kids[i], c)) {
                return false;
            }
        }
        return true;
    case F_ANY:
        for (int i = 0; i < f->nkids; i++) {
            if (eval(f->kids[i], c)) {
                return true;
            }
        }
        return false;
    case F_NOT:
        return !eval(f->kids[0], c);
    case F_NKINDS:
        break;
    }
    mt_assert(!"unknown filter kind");
    return false;
}

mt_err mt_filter_eval(const mt_filter *f, const mt_event *ev, bool *match)
{
    mt_assert(match != NULL);
    *match = false;
    mt_assert(f != NULL && ev != NULL);
    eval_ctx c = {.ev = ev};
    *match = eval(f, &c);
    json_decref(c.data);
    json_decref(c.ext);
    return MT_OK;
}

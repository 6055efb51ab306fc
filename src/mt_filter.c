#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_filter.h"
#include "mt_mem.h"

#define MAX_DEPTH 16

typedef enum kind { F_EXACT, F_PREFIX, F_SUFFIX, F_ALL, F_ANY, F_NOT } kind;

typedef struct pair {
    char *attr;   /* owned */
    char *value;  /* owned */
} pair;

struct mt_filter {
    kind k;
    pair *pairs;          /* exact/prefix/suffix */
    int npairs;
    mt_filter **kids;     /* all/any/not */
    int nkids;
};

void mt_filter_free(mt_filter *f)
{
    if (!f) {
        return;
    }
    for (int i = 0; i < f->npairs; i++) {
        free(f->pairs[i].attr);
        free(f->pairs[i].value);
    }
    free(f->pairs);
    for (int i = 0; i < f->nkids; i++) {
        mt_filter_free(f->kids[i]);
    }
    free(f->kids);
    free(f);
}

static const char *const dialects[] = {"exact", "prefix", "suffix", "all", "any", "not", NULL};

static mt_filter *compile(const json_t *spec, const char *path, int depth, char *err,
                          size_t errlen)
{
    if (depth > MAX_DEPTH) {
        snprintf(err, errlen, "%s: nested more than %d deep", path, MAX_DEPTH);
        return NULL;
    }
    if (!json_is_object(spec) || json_object_size(spec) != 1) {
        snprintf(err, errlen, "%s: expects an object with one of exact, prefix, suffix, all, "
                 "any, not", path);
        return NULL;
    }
    const char *name = json_object_iter_key(json_object_iter((json_t *) spec));
    const json_t *v = json_object_iter_value(json_object_iter((json_t *) spec));
    int k = 0;
    while (dialects[k] && strcmp(dialects[k], name) != 0) {
        k++;
    }
    if (!dialects[k]) {
        snprintf(err, errlen, "%s: unknown dialect '%.40s' (expected exact, prefix, suffix, "
                 "all, any or not)", path, name);
        return NULL;
    }
    char sub[256];
    snprintf(sub, sizeof sub, "%s.%s", path, name);
    mt_filter *f = mt_xcalloc(1, sizeof *f);
    f->k = (kind) k;
    if (f->k <= F_SUFFIX) {
        if (!json_is_object(v) || json_object_size(v) == 0) {
            snprintf(err, errlen, "%s: expects an object of attribute: string", sub);
            mt_filter_free(f);
            return NULL;
        }
        f->pairs = mt_xcalloc(json_object_size(v), sizeof *f->pairs);
        const char *attr;
        json_t *val;
        json_object_foreach((json_t *) v, attr, val) {
            if (!json_is_string(val) || !*attr) {
                snprintf(err, errlen, "%s.%.64s: expects a string", sub, attr);
                mt_filter_free(f);
                return NULL;
            }
            f->pairs[f->npairs].attr = mt_xstrdup(attr);
            f->pairs[f->npairs].value = mt_xstrdup(json_string_value(val));
            f->npairs++;
        }
        return f;
    }
    if (f->k == F_NOT) {
        f->kids = mt_xcalloc(1, sizeof *f->kids);
        f->kids[0] = compile(v, sub, depth + 1, err, errlen);
        if (!f->kids[0]) {
            mt_filter_free(f);
            return NULL;
        }
        f->nkids = 1;
        return f;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        snprintf(err, errlen, "%s: expects a non-empty list of filters", sub);
        mt_filter_free(f);
        return NULL;
    }
    f->kids = mt_xcalloc(json_array_size(v), sizeof *f->kids);
    for (size_t i = 0; i < json_array_size(v); i++) {
        char item[300];
        snprintf(item, sizeof item, "%s[%zu]", sub, i);
        f->kids[i] = compile(json_array_get(v, i), item, depth + 1, err, errlen);
        if (!f->kids[i]) {
            mt_filter_free(f);
            return NULL;
        }
        f->nkids++;
    }
    return f;
}

mt_err mt_filter_compile(const json_t *spec, mt_filter **out, char *err, size_t errlen)
{
    *out = compile(spec, "filter", 0, err, errlen);
    return *out ? MT_OK : MT_EINVAL;
}

/* ---- evaluation ---- */

typedef struct eval_ctx {
    const mt_event *ev;
    json_t *data;      /* parsed once, on first use */
    json_t *ext;
    bool data_tried, ext_tried;
} eval_ctx;

/* Text of a JSON scalar for comparison into buf; NULL if it has none. */
static const char *scalar_text(const json_t *v, char *buf, size_t len)
{
    if (json_is_string(v)) {
        return json_string_value(v);
    }
    if (json_is_integer(v) || json_is_real(v) || json_is_boolean(v)) {
        char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!t) {
            return NULL;
        }
        snprintf(buf, len, "%s", t);
        free(t);
        return buf;
    }
    return NULL;
}

static const char *attr_value(eval_ctx *c, const char *attr, char *buf, size_t len)
{
    const mt_event *ev = c->ev;
    if (strncmp(attr, "data.", 5) == 0) {
        if (!c->data_tried) {
            c->data_tried = true;
            if (ev->data_kind == MT_DATA_JSON) {
                c->data = json_loadb((const char *) ev->data, ev->data_len, JSON_DECODE_ANY, NULL);
            }
        }
        const json_t *v = c->data;
        const char *p = attr + 5;
        while (v && *p) {
            const char *dot = strchr(p, '.');
            size_t n = dot ? (size_t) (dot - p) : strlen(p);
            char key[256];
            if (n >= sizeof key || !json_is_object(v)) {
                return NULL;
            }
            memcpy(key, p, n);
            key[n] = '\0';
            v = json_object_get(v, key);
            p = dot ? dot + 1 : p + n;
        }
        return v ? scalar_text(v, buf, len) : NULL;
    }
    if (strcmp(attr, "specversion") == 0) {
        return "1.0";
    }
    if (strcmp(attr, "priority") == 0) {
        if (ev->priority < 0) {
            return NULL;
        }
        snprintf(buf, len, "%d", ev->priority);
        return buf;
    }
    for (int i = 0; i < MT_ATTR_EXTENSIONS; i++) {
        if (strcmp(attr, mt_event_attr_name((mt_event_attr) i)) == 0) {
            return ev->attr[i];
        }
    }
    if (!c->ext_tried) {
        c->ext_tried = true;
        if (ev->attr[MT_ATTR_EXTENSIONS]) {
            c->ext = json_loads(ev->attr[MT_ATTR_EXTENSIONS], 0, NULL);
        }
    }
    const json_t *v = json_object_get(c->ext, attr);
    return v ? scalar_text(v, buf, len) : NULL;
}

static bool eval(const mt_filter *f, eval_ctx *c)
{
    switch (f->k) {
    case F_EXACT:
    case F_PREFIX:
    case F_SUFFIX:
        for (int i = 0; i < f->npairs; i++) {
            char buf[64];
            const char *have = attr_value(c, f->pairs[i].attr, buf, sizeof buf);
            const char *want = f->pairs[i].value;
            if (!have) {
                return false;
            }
            size_t hl = strlen(have), wl = strlen(want);
            bool ok = f->k == F_EXACT    ? strcmp(have, want) == 0
                      : f->k == F_PREFIX ? hl >= wl && memcmp(have, want, wl) == 0
                                         : hl >= wl && memcmp(have + hl - wl, want, wl) == 0;
            if (!ok) {
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
    }
    return false;
}

mt_err mt_filter_eval(const mt_filter *f, const mt_event *ev, bool *match)
{
    eval_ctx c = {ev, NULL, NULL, false, false};
    *match = eval(f, &c);
    json_decref(c.data);
    json_decref(c.ext);
    return MT_OK;
}

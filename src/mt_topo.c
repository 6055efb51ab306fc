#include <ctype.h>
#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <unistd.h>
#include <yaml.h>
#include "mt_filter.h"
#include "mt_mem.h"
#include "mt_topic.h"
#include "mt_topo.h"
#include "mt_util.h"
#include "mt_webhook.h"

/*
 * A topology file is read whole before parsing; anything bigger than this is
 * not a hand-written topology, and the cap keeps the allocation bounded.
 */
#define MAX_FILE_SIZE (16u << 20)

/* Longest scalar quoted back in a message before it is cut with "...". */
#define MAX_QUOTE 40

#define KIB (1ULL << 10)
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

/* ---- error collection ---- */

#define JSON_NODES_MAX 10000 /* values in one filter, aliases expanded */
#define NEST_MAX 64          /* collections in collections, in any YAML read */
#define MAPPING_MAX 10000    /* keys in one mapping (subscriptions included) */

/*
 * Where a node of a document built from JSON came from (such a document has
 * no line and column): its parent collection and the key or index that
 * holds it there. Indexed by node id - 1.
 */
typedef struct json_origin {
    int parent;      /* node id of the enclosing collection; 0 for the root */
    int key;         /* node id of the key holding it in a mapping; 0 in a sequence */
    size_t index;    /* position in a sequence */
} json_origin;

/* A JSON value made by yaml_to_json and the YAML nodes it comes from. */
typedef struct filter_node {
    const json_t *json;
    const yaml_node_t *key;   /* the key naming it, NULL at the top or in a sequence */
    const yaml_node_t *value;
} filter_node;

/* State of one mt_topo_load() call. */
typedef struct loader {
    const char *path;
    yaml_document_t *doc;
    json_origin *json;      /* the document was built from JSON: where its nodes were */
    size_t njson, capjson;  /* entries in 'json', and room for */
    mt_topo_errs *errs;
    mt_topo *topo;          /* filled in as keys are read; discarded if any error */
    mt_sub_conf *sub;       /* the subscription being read */
    bool files_may_be_gone; /* a handler file that cannot be read is not an error */
    bool over_http;         /* a definition made over HTTP: handler paths stay in the project */
    mt_topo_compile_fn compile; /* handlers are compiled as read (check) */
    int json_left;          /* nodes yaml_to_json may still make */
    filter_node *fnodes;    /* what yaml_to_json made, to place filter errors */
    size_t nfnodes, capfnodes;
    char fpath[512];        /* where yaml_to_json is: "all[1].exact" ("" at the top) */
    char path_buf[160];     /* "subscriptions.NAME.key" for messages */
} loader;

static void errs_insert(mt_topo_errs *errs, int at, char *line)
{
    errs->lines = mt_xrealloc(errs->lines, (size_t) (errs->count + 1) * sizeof *errs->lines);
    memmove(errs->lines + at + 1, errs->lines + at,
            (size_t) (errs->count - at) * sizeof *errs->lines);
    errs->lines[at] = line;
    errs->count++;
}

/*
 * Adds "FILE:WHERE: error: MESSAGE" (or "FILE: error: MESSAGE" when 'where'
 * is empty) at index 'at' of the error list (-1 = the end). Errors are added
 * in document order; inserting lets a mapping report a missing key at its
 * own start, ahead of the errors of its children.
 */
static void err_add(loader *ld, int at, const char *where, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    mt_assert(n >= 0);
    char *msg = mt_xmalloc((size_t) n + 1);
    vsnprintf(msg, (size_t) n + 1, fmt, ap2);
    va_end(ap2);
    char *line = where[0] ? mt_xasprintf("%s:%s: error: %s", ld->path, where, msg)
                          : mt_xasprintf("%s: error: %s", ld->path, msg);
    free(msg);
    errs_insert(ld->errs, at < 0 ? ld->errs->count : at, line);
}

/* Reports at a position of the text: "LINE:COL", counted from 1. */
static void __attribute__((format(printf, 4, 5)))
err_at(loader *ld, int at, yaml_mark_t mark, const char *fmt, ...)
{
    char where[48];
    snprintf(where, sizeof where, "%zu:%zu", mark.line + 1, mark.column + 1);
    va_list ap;
    va_start(ap, fmt);
    err_add(ld, at, where, fmt, ap);
    va_end(ap);
}

/* One JSON Pointer step (RFC 6901: '~' is written ~0 and '/' ~1) of node 'id'. */
static void json_step(loader *ld, int id, mt_buf *b)
{
    const json_origin *o = &ld->json[id - 1];
    if (!o->key) {
        mt_buf_addf(b, "%zu", o->index);
        return;
    }
    const yaml_node_t *k = yaml_document_get_node(ld->doc, o->key);
    for (size_t i = 0; i < k->data.scalar.length; i++) {
        char c = (char) k->data.scalar.value[i];
        mt_buf_adds(b, c == '~' ? "~0" : c == '/' ? "~1" : (char[]){c, '\0'});
    }
}

/*
 * Where node 'n' is, for a message: "LINE:COL" in a YAML text, its JSON
 * Pointer in a document built from JSON ("/retry/backoff", "" for the
 * whole), cut at 200 bytes. Caller frees.
 */
static char *node_where(loader *ld, const yaml_node_t *n)
{
    if (!ld->json) {
        return mt_xasprintf("%zu:%zu", n->start_mark.line + 1, n->start_mark.column + 1);
    }
    int chain[NEST_MAX + 2];
    int depth = 0;
    for (int id = (int) (n - ld->doc->nodes.start) + 1; id && depth < NEST_MAX + 2;
         id = ld->json[id - 1].parent) {
        chain[depth++] = id;
    }
    mt_buf b;
    mt_buf_init(&b);
    /* The root has no step: a pointer is the steps below it. */
    for (int i = depth - 2; i >= 0; i--) {
        mt_buf_adds(&b, "/");
        json_step(ld, chain[i], &b);
    }
    if (b.len > 200) {
        b.len = 197;
        while (b.len > 0 && ((unsigned char) b.data[b.len] & 0xC0) == 0x80) {
            b.len--;
        }
        mt_buf_adds(&b, "...");
    }
    char *r = mt_xstrdup(mt_buf_cstr(&b));
    mt_buf_free(&b);
    return r;
}

/* Reports at node 'n', inserting at index 'at' (-1 = the end). */
static void __attribute__((format(printf, 4, 5)))
err_node_at(loader *ld, int at, const yaml_node_t *n, const char *fmt, ...)
{
    char *where = node_where(ld, n);
    va_list ap;
    va_start(ap, fmt);
    err_add(ld, at, where, fmt, ap);
    va_end(ap);
    free(where);
}

#define err_node(ld, node, ...) err_node_at((ld), -1, (node), __VA_ARGS__)

/* ---- describing nodes in messages ---- */

static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        return false;
    }
    const char *s = (const char *) n->data.scalar.value;
    size_t len = n->data.scalar.length;
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++) {
        if (len == strlen(nulls[i]) && memcmp(s, nulls[i], len) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * What a scalar means, typed as JSON types its values: a YAML plain scalar
 * is resolved by the YAML 1.2 core schema, a quoted one is always text. A
 * document built from JSON writes its strings quoted and its numbers,
 * booleans and nulls plain, so both read alike.
 */
typedef enum scalar_type {
    SCALAR_TEXT,
    SCALAR_NULL,
    SCALAR_BOOL,
    SCALAR_NUMBER,      /* a number JSON can write: 5, -12, 2.50, 1e3 */
    SCALAR_YAML_NUMBER  /* a number only YAML writes (+5, 05, 0x1F, .5, .inf), or too big */
} scalar_type;

/* Whether 's' is a number by the YAML 1.2 core schema. */
static bool yaml_number(const char *s)
{
    regex_t re;
    int rc = regcomp(&re, "^([-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|"
                     "[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?|"
                     "[-+]?\\.(inf|Inf|INF)|\\.(nan|NaN|NAN))$", REG_EXTENDED | REG_NOSUB);
    mt_assert(rc == 0);
    bool match = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return match;
}

/*
 * The type of scalar node 'n'. With SCALAR_NUMBER and SCALAR_BOOL, 'text'
 * (MT_FILTER_TEXT_MAX bytes) gets the value's text as a filter compares
 * it: as JSON data of that value reads (1e3 is "1000.0", True is "true").
 */
static scalar_type scalar_type_of(const yaml_node_t *n, char *text)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        return SCALAR_TEXT;
    }
    if (is_null(n)) {
        return SCALAR_NULL;
    }
    const char *s = (const char *) n->data.scalar.value;
    size_t len = n->data.scalar.length;
    static const char *const bools[] = {"true", "True", "TRUE", "false", "False", "FALSE"};
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        if (len == strlen(bools[i]) && memcmp(s, bools[i], len) == 0) {
            snprintf(text, MT_FILTER_TEXT_MAX, "%s", i < 3 ? "true" : "false");
            return SCALAR_BOOL;
        }
    }
    if (strlen(s) != len || !strchr("-+.0123456789", s[0])) {
        return SCALAR_TEXT;
    }
    json_t *j = json_loadb(s, len, JSON_DECODE_ANY, NULL);
    bool number = mt_filter_number_text(j, text);
    json_decref(j);
    if (number) {
        return SCALAR_NUMBER;
    }
    return yaml_number(s) ? SCALAR_YAML_NUMBER : SCALAR_TEXT;
}

/*
 * Reports a number or boolean where only text is meant (a topic pattern, a
 * handler path): quoting it says the text is meant. False if 'n' is text.
 */
static bool err_not_text(loader *ld, const yaml_node_t *n, const char *path, const char *expect)
{
    char text[MT_FILTER_TEXT_MAX];
    scalar_type t = scalar_type_of(n, text);
    if (t != SCALAR_BOOL && t != SCALAR_NUMBER && t != SCALAR_YAML_NUMBER) {
        return false;
    }
    err_node(ld, n, "'%s' must be %s: a string, not %s (got %.40s; quote it to mean the text)",
             path, expect, t == SCALAR_BOOL ? "a boolean" : "a number",
             (const char *) n->data.scalar.value);
    return true;
}

/*
 * 's' in single quotes, cut at MAX_QUOTE characters or the first line break,
 * with control bytes shown as '?', so one error stays on one line.
 */
static char *quote(const unsigned char *s, size_t len)
{
    mt_buf b;
    mt_buf_init(&b);
    mt_buf_adds(&b, "'");
    size_t chars = 0;
    size_t i = 0;
    bool cut = false;
    for (; i < len; i++) {
        unsigned char c = s[i];
        bool starts_char = (c & 0xC0) != 0x80;
        if (starts_char && chars == MAX_QUOTE) {
            cut = true;
            break;
        }
        if (c == '\n' || c == '\r') {
            cut = true;
            break;
        }
        if (starts_char) {
            chars++;
        }
        char out = (c < 0x20 || c == 0x7f) ? '?' : (char) c;
        mt_buf_add(&b, &out, 1);
    }
    mt_buf_adds(&b, cut ? "...'" : "'");
    char *r = mt_xstrdup(mt_buf_cstr(&b));
    mt_buf_free(&b);
    return r;
}

/* What a node is, for "(got ...)": "a mapping", "an empty value", "'text'". */
static char *describe(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return mt_xstrdup("a mapping");
    case YAML_SEQUENCE_NODE:
        return mt_xstrdup("a sequence");
    case YAML_SCALAR_NODE:
        if (is_null(n)) {
            return mt_xstrdup("an empty value");
        }
        return quote(n->data.scalar.value, n->data.scalar.length);
    default:
        return mt_xstrdup("nothing");
    }
}

/* Reports "'PATH' must be EXPECT (got ...)" at 'n'. */
static void err_expected(loader *ld, const yaml_node_t *n, const char *path, const char *expect)
{
    char *got = describe(n);
    err_node(ld, n, "'%s' must be %s (got %s)", path, expect, got);
    free(got);
}

/*
 * The text of a scalar value, or NULL after reporting why it is unusable:
 * not a scalar, empty, or holding a NUL byte (the rest of the engine works
 * with C strings).
 */
static const char *scalar_text(loader *ld, const yaml_node_t *n, const char *path,
                               const char *expect)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n)) {
        err_expected(ld, n, path, expect);
        return NULL;
    }
    const char *s = (const char *) n->data.scalar.value;
    if (n->data.scalar.length == 0) {
        err_node(ld, n, "'%s' must not be empty", path);
        return NULL;
    }
    if (strlen(s) != n->data.scalar.length) {
        err_node(ld, n, "'%s' must not contain a NUL byte", path);
        return NULL;
    }
    return s;
}

static void set_str(char **field, const char *s)
{
    free(*field);
    *field = mt_xstrdup(s);
}

/* ---- mapping walker: sections and keys are tables ---- */

typedef void (*value_fn)(loader *ld, const yaml_node_t *value);

typedef struct key_spec {
    const char *name;
    value_fn parse;         /* NULL: reserved for a later version, refused for now */
    bool required;
} key_spec;

static bool key_is(const yaml_node_t *k, const char *name)
{
    return k->type == YAML_SCALAR_NODE && k->data.scalar.length == strlen(name) &&
           memcmp(k->data.scalar.value, name, k->data.scalar.length) == 0;
}

static bool same_key(const yaml_node_t *a, const yaml_node_t *b)
{
    return a->type == YAML_SCALAR_NODE && b->type == YAML_SCALAR_NODE &&
           a->data.scalar.length == b->data.scalar.length &&
           memcmp(a->data.scalar.value, b->data.scalar.value, a->data.scalar.length) == 0;
}

/* "a, b, c" of the supported (non-reserved) keys. */
static char *key_list(const key_spec *specs)
{
    mt_buf b;
    mt_buf_init(&b);
    for (const key_spec *s = specs; s->name; s++) {
        if (s->parse) {
            mt_buf_addf(&b, "%s%s", b.len ? ", " : "", s->name);
        }
    }
    char *r = mt_xstrdup(mt_buf_cstr(&b));
    mt_buf_free(&b);
    return r;
}

/*
 * Checks every key of 'map' against 'specs' and hands each value to its
 * parser. 'where' names the mapping in messages ("at top level", "in engine").
 * Every problem is reported and the walk goes on, so one pass finds them all.
 * A duplicated key's value is not parsed: the duplicate is the error to fix.
 */
static void walk_mapping(loader *ld, const yaml_node_t *map, const char *where,
                         const key_spec *specs)
{
    mt_assert(map->type == YAML_MAPPING_NODE);
    /* Duplicates are found by comparing each key with those before it. */
    size_t npairs = (size_t) (map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (npairs > MAPPING_MAX) {
        err_node(ld, map, "a mapping of %zu keys %s; at most %d", npairs, where, MAPPING_MAX);
        return;
    }
    int first_err = ld->errs->count;
    size_t nspecs = 0;
    while (specs[nspecs].name) {
        nspecs++;
    }
    bool *seen = mt_xcalloc(nspecs, sizeof *seen);

    yaml_node_pair_t *start = map->data.mapping.pairs.start;
    yaml_node_pair_t *top = map->data.mapping.pairs.top;
    for (yaml_node_pair_t *p = start; p < top; p++) {
        const yaml_node_t *k = yaml_document_get_node(ld->doc, p->key);
        const yaml_node_t *v = yaml_document_get_node(ld->doc, p->value);
        if (k->type != YAML_SCALAR_NODE || is_null(k)) {
            char *got = describe(k);
            err_node(ld, k, "keys must be strings (got %s)", got);
            free(got);
            continue;
        }
        char *name = quote(k->data.scalar.value, k->data.scalar.length);
        const yaml_node_pair_t *dup = NULL;
        for (const yaml_node_pair_t *q = start; q < p && !dup; q++) {
            if (same_key(yaml_document_get_node(ld->doc, q->key), k)) {
                dup = q;
            }
        }
        if (dup) {
            const yaml_node_t *dk = yaml_document_get_node(ld->doc, dup->key);
            err_node(ld, k, "duplicate key %s %s (first at line %zu)", name, where,
                     dk->start_mark.line + 1);
            free(name);
            continue;
        }
        size_t i = 0;
        while (i < nspecs && !key_is(k, specs[i].name)) {
            i++;
        }
        if (i == nspecs) {
            char *allowed = key_list(specs);
            err_node(ld, k, "unknown key %s %s (expected one of: %s)", name, where, allowed);
            free(allowed);
        } else if (!specs[i].parse) {
            err_node(ld, k, "%s is not supported by this version of moontide", name);
        } else {
            seen[i] = true;
            specs[i].parse(ld, v);
        }
        free(name);
    }

    for (size_t i = 0; i < nspecs; i++) {
        if (specs[i].required && !seen[i]) {
            err_node_at(ld, first_err, map, "missing required key '%s' %s",
                   specs[i].name, where);
        }
    }
    free(seen);
}

/* ---- engine section ---- */

/* Sets *out from a size value within [min, max]; reports and leaves *out otherwise. */
static void get_size(loader *ld, const yaml_node_t *v, const char *path, uint64_t min,
                     const char *min_text, uint64_t max, const char *max_text, uint64_t *out)
{
    const char *s = scalar_text(ld, v, path, "a size such as 64MiB or 1GiB");
    if (!s) {
        return;
    }
    uint64_t bytes;
    if (mt_parse_size(s, &bytes)) {
        err_expected(ld, v, path, "a size such as 64MiB or 1GiB");
        return;
    }
    if (bytes < min || bytes > max) {
        char *got = describe(v);
        if (max == UINT64_MAX) {
            err_node(ld, v, "'%s' must be at least %s (got %s)", path, min_text, got);
        } else {
            err_node(ld, v, "'%s' must be between %s and %s (got %s)", path, min_text,
                     max_text, got);
        }
        free(got);
        return;
    }
    *out = bytes;
}

/* Index of 's' in the NULL-terminated 'choices', or -1 after reporting. */
static int get_choice(loader *ld, const yaml_node_t *v, const char *path,
                      const char *const *choices)
{
    mt_buf b;
    mt_buf_init(&b);
    mt_buf_adds(&b, "one of: ");
    for (int i = 0; choices[i]; i++) {
        mt_buf_addf(&b, "%s%s", i ? ", " : "", choices[i]);
    }
    int found = -1;
    const char *s = scalar_text(ld, v, path, mt_buf_cstr(&b));
    if (s) {
        for (int i = 0; choices[i] && found < 0; i++) {
            if (strcmp(s, choices[i]) == 0) {
                found = i;
            }
        }
        if (found < 0) {
            err_expected(ld, v, path, mt_buf_cstr(&b));
        }
    }
    mt_buf_free(&b);
    return found;
}

static void engine_data_dir(loader *ld, const yaml_node_t *v)
{
    const char *s = scalar_text(ld, v, "engine.data_dir", "a directory path");
    if (s) {
        set_str(&ld->topo->engine.data_dir, s);
    }
}

static mt_err parse_listen(const char *s, char **host, uint16_t *port, const char **why);

static void engine_listen(loader *ld, const yaml_node_t *v)
{
    const char *s = scalar_text(ld, v, "engine.listen", "host:port");
    if (!s) {
        return;
    }
    char *host;
    uint16_t port;
    const char *why;
    if (parse_listen(s, &host, &port, &why)) {
        char *got = describe(v);
        err_node(ld, v, "'engine.listen' must be host:port: %s (got %s)", why, got);
        free(got);
        return;
    }
    free(ld->topo->engine.listen_host);
    ld->topo->engine.listen_host = host;
    ld->topo->engine.listen_port = port;
}

static void engine_map_size(loader *ld, const yaml_node_t *v)
{
    get_size(ld, v, "engine.map_size", MIB, "1MiB", UINT64_MAX, NULL,
             &ld->topo->engine.map_size);
}

static void engine_durability(loader *ld, const yaml_node_t *v)
{
    /* Same order as mt_durability. */
    static const char *const names[] = {"fsync", "nosync", NULL};
    int i = get_choice(ld, v, "engine.durability", names);
    if (i >= 0) {
        ld->topo->engine.durability = i == 0 ? MT_DURABILITY_FSYNC : MT_DURABILITY_NOSYNC;
    }
}

static void engine_max_body(loader *ld, const yaml_node_t *v)
{
    get_size(ld, v, "engine.max_body", KIB, "1KiB", GIB, "1GiB", &ld->topo->engine.max_body);
}

static void engine_wal_size(loader *ld, const yaml_node_t *v)
{
    get_size(ld, v, "engine.wal_size", MIB, "1MiB", UINT64_MAX, NULL,
             &ld->topo->engine.wal_size);
}

static void engine_log_level(loader *ld, const yaml_node_t *v)
{
    static const char *const names[] = {"debug", "info", "warn", "error", NULL};
    int i = get_choice(ld, v, "engine.log_level", names);
    if (i >= 0) {
        set_str(&ld->topo->engine.log_level, names[i]);
    }
}

static const key_spec engine_keys[] = {
    {"data_dir", engine_data_dir, false},
    {"listen", engine_listen, false},
    {"map_size", engine_map_size, false},
    {"durability", engine_durability, false},
    {"max_body", engine_max_body, false},
    {"wal_size", engine_wal_size, false},
    {"log_level", engine_log_level, false},
    {NULL, NULL, false},
};

static void section_engine(loader *ld, const yaml_node_t *v)
{
    /* "engine:" with every key commented out is a null: it means all defaults. */
    if (is_null(v)) {
        return;
    }
    if (v->type != YAML_MAPPING_NODE) {
        err_expected(ld, v, "engine", "a mapping");
        return;
    }
    walk_mapping(ld, v, "in engine", engine_keys);
}

/* ---- subscriptions section ---- */

/* "subscriptions.NAME.KEY" into ld->path_buf, for messages. */
static const char *sub_path(loader *ld, const char *key)
{
    snprintf(ld->path_buf, sizeof ld->path_buf, "subscriptions.%.64s.%s", ld->sub->name, key);
    return ld->path_buf;
}

static void sub_topics(loader *ld, const yaml_node_t *v)
{
    const char *path = sub_path(ld, "topics");
    if (v->type == YAML_SCALAR_NODE && !is_null(v)) {
        /* One pattern may be written without the list brackets. */
        if (err_not_text(ld, v, path, "a list of topic patterns")) {
            return;
        }
        const char *t = scalar_text(ld, v, path, "a list of topic patterns");
        if (t && mt_topic_validate_pattern(t)) {
            err_node(ld, v, "'%s': '%.100s' is not a topic pattern ('.'-separated words; '*' "
                     "and '#' only as whole words)", path, t);
        } else if (t) {
            ld->sub->topics = mt_xcalloc(1, sizeof *ld->sub->topics);
            ld->sub->topics[0] = mt_xstrdup(t);
            ld->sub->ntopics = 1;
        }
        return;
    }
    if (v->type != YAML_SEQUENCE_NODE || v->data.sequence.items.top == v->data.sequence.items.start) {
        err_expected(ld, v, path, "a non-empty list of topic patterns");
        return;
    }
    yaml_node_item_t *start = v->data.sequence.items.start, *top = v->data.sequence.items.top;
    ld->sub->topics = mt_xcalloc((size_t) (top - start), sizeof *ld->sub->topics);
    for (yaml_node_item_t *i = start; i < top; i++) {
        const yaml_node_t *n = yaml_document_get_node(ld->doc, *i);
        if (err_not_text(ld, n, sub_path(ld, "topics"), "a topic pattern")) {
            continue;
        }
        const char *t = scalar_text(ld, n, sub_path(ld, "topics"), "a topic pattern");
        if (!t) {
            continue;
        }
        if (mt_topic_validate_pattern(t)) {
            err_node(ld, n, "'%s': '%.100s' is not a topic pattern ('.'-separated words; '*' "
                     "and '#' only as whole words)", sub_path(ld, "topics"), t);
            continue;
        }
        ld->sub->topics[ld->sub->ntopics++] = mt_xstrdup(t);
    }
}

/* Reports a problem of the filter at 'n', naming where it is in the filter. */
static void __attribute__((format(printf, 3, 4)))
err_filter(loader *ld, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[300];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *path = sub_path(ld, "filter");
    if (ld->fpath[0]) {
        err_node(ld, n, "'%s': %s: %s", path, ld->fpath, msg);
    } else {
        err_node(ld, n, "'%s': %s", path, msg);
    }
}

/* Appends a step to ld->fpath as push() in mt_filter.c does; returns the old length. */
static size_t fpath_push(loader *ld, const char *step, size_t n, bool key)
{
    size_t old = strlen(ld->fpath);
    snprintf(ld->fpath + old, sizeof ld->fpath - old, "%s%.*s", key && old ? "." : "",
             (int) n, step);
    return old;
}

/*
 * Node n, a value of a filter, as JSON for mt_filter_compile: mappings
 * become objects, sequences arrays, and scalars strings (a number or a
 * boolean becomes the text it is compared as, see scalar_type_of), or NULL
 * after reporting why not: a duplicate key or one that is not a string, a
 * null, a number JSON cannot write, nesting deeper than NEST_MAX, or more
 * than JSON_NODES_MAX nodes in all (ld->json_left counts down). An alias
 * is expanded where it is used, so ten aliases of ten aliases of ... grow
 * tenfold a level: the count stops a file of a few hundred bytes from
 * asking for gigabytes. Each value made is noted in ld->fnodes with the
 * nodes it comes from, so the compiler's errors can be placed.
 */
static json_t *yaml_to_json(loader *ld, const yaml_node_t *key, const yaml_node_t *n, int depth)
{
    if (ld->json_left == 0) {
        return NULL;
    }
    if (depth > NEST_MAX) {
        err_filter(ld, n, "nested deeper than %d levels", NEST_MAX);
        return NULL;
    }
    ld->json_left--;
    json_t *r = NULL;
    if (n->type == YAML_SCALAR_NODE) {
        char text[MT_FILTER_TEXT_MAX];
        const char *s = (const char *) n->data.scalar.value;
        switch (scalar_type_of(n, text)) {
        case SCALAR_NULL:
            err_filter(ld, n, "null is not a value here (to match an empty string, write \"\")");
            return NULL;
        case SCALAR_YAML_NUMBER:
            err_filter(ld, n, "%.40s is a number JSON cannot write as it is: quote it (\"%.40s\") "
                       "to match that text, or write the number as JSON data has it", s, s);
            return NULL;
        case SCALAR_BOOL:
        case SCALAR_NUMBER:
            r = json_string(text);
            break;
        case SCALAR_TEXT:
            r = json_stringn(s, n->data.scalar.length);
            break;
        }
    } else if (n->type == YAML_SEQUENCE_NODE) {
        r = json_array();
        size_t i = 0;
        for (yaml_node_item_t *it = n->data.sequence.items.start;
             it < n->data.sequence.items.top; it++, i++) {
            char step[24];
            int len = snprintf(step, sizeof step, "[%zu]", i);
            size_t old = fpath_push(ld, step, (size_t) len, false);
            json_t *x = yaml_to_json(ld, NULL, yaml_document_get_node(ld->doc, *it), depth + 1);
            ld->fpath[old] = '\0';
            if (!x) {
                json_decref(r);
                return NULL;
            }
            json_array_append_new(r, x);
        }
    } else if (n->type == YAML_MAPPING_NODE) {
        r = json_object();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            const yaml_node_t *k = yaml_document_get_node(ld->doc, p->key);
            if (k->type != YAML_SCALAR_NODE || is_null(k)) {
                char *got = describe(k);
                err_filter(ld, k, "keys must be strings (got %s)", got);
                free(got);
                json_decref(r);
                return NULL;
            }
            for (const yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
                const yaml_node_t *qk = yaml_document_get_node(ld->doc, q->key);
                if (same_key(qk, k)) {
                    char *name = quote(k->data.scalar.value, k->data.scalar.length);
                    err_filter(ld, k, "duplicate key %s (first at line %zu)", name,
                               qk->start_mark.line + 1);
                    free(name);
                    json_decref(r);
                    return NULL;
                }
            }
            size_t old = fpath_push(ld, (const char *) k->data.scalar.value,
                                    k->data.scalar.length, true);
            json_t *x = yaml_to_json(ld, k, yaml_document_get_node(ld->doc, p->value),
                                     depth + 1);
            ld->fpath[old] = '\0';
            if (!x || json_object_setn_new(r, (const char *) k->data.scalar.value,
                                           k->data.scalar.length, x)) {
                json_decref(r);
                return NULL;
            }
        }
    }
    if (!r) {
        fprintf(stderr, "moontide: out of memory reading a filter\n");
        abort();
    }
    if (ld->nfnodes == ld->capfnodes) {
        ld->capfnodes = ld->capfnodes ? 2 * ld->capfnodes : 64;
        ld->fnodes = mt_xrealloc(ld->fnodes, ld->capfnodes * sizeof *ld->fnodes);
    }
    ld->fnodes[ld->nfnodes++] = (filter_node){r, key, n};
    return r;
}

static void sub_filter(loader *ld, const yaml_node_t *v)
{
    const char *path = sub_path(ld, "filter");
    if (v->type != YAML_MAPPING_NODE) {
        /* Null too: no filter is written by leaving the key out. */
        err_expected(ld, v, path, "a filter mapping (exact, prefix, suffix, all, any, not)");
        return;
    }
    ld->json_left = JSON_NODES_MAX;
    ld->fpath[0] = '\0';
    ld->nfnodes = 0;
    int nerrs = ld->errs->count;
    json_t *spec = yaml_to_json(ld, NULL, v, 1);
    if (!spec) {
        if (ld->errs->count == nerrs) {
            err_node(ld, v, "'%s' has more than %d values once its aliases are expanded", path,
                     JSON_NODES_MAX);
        }
        return;
    }
    mt_filter *f = NULL;
    char err[256];
    const json_t *at;
    bool at_key;
    if (mt_filter_compile_at(spec, &f, err, sizeof err, &at, &at_key)) {
        /* At the offending node: the value, or the key naming it. */
        const yaml_node_t *where = v;
        for (size_t i = 0; i < ld->nfnodes; i++) {
            if (ld->fnodes[i].json == at) {
                const filter_node *fn = &ld->fnodes[i];
                where = at_key && fn->key ? fn->key : fn->value;
            }
        }
        err_node(ld, where, "'%s': %s", sub_path(ld, "filter"), err);
    } else {
        ld->sub->filter_json = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
    }
    mt_filter_free(f);
    json_decref(spec);
}

/*
 * Whether path 'p' names a file under the working directory by its words
 * alone: relative, and no word is "..". Subscriptions made over HTTP may
 * only run the project's own files; the topology file, written by whoever
 * runs the engine, may name any.
 */
static bool inside_project(const char *p)
{
    if (p[0] == '/') {
        return false;
    }
    for (const char *w = p; *w;) {
        size_t n = strcspn(w, "/");
        if (n == 2 && w[0] == '.' && w[1] == '.') {
            return false;
        }
        w += n;
        w += *w == '/';
    }
    return true;
}

static void sub_handler(loader *ld, const yaml_node_t *v)
{
    const char *path = sub_path(ld, "handler");
    if (err_not_text(ld, v, path, "the path of a Lua handler")) {
        return;
    }
    const char *h = scalar_text(ld, v, path, "the path of a Lua handler");
    if (!h) {
        return;
    }
    if (ld->over_http && !inside_project(h)) {
        err_node(ld, v, "'%s': '%.200s' is outside the engine's working directory: a subscription "
                 "made over HTTP names its handler by a relative path without '..' "
                 "(handlers/NAME.lua)", path, h);
        return;
    }
    if (!ld->files_may_be_gone && access(h, R_OK) != 0) {
        err_node(ld, v, "'%s': cannot read '%.200s': %s", path, h, strerror(errno));
        return;
    }
    char why[1024];
    if (ld->compile && !ld->compile(h, why, sizeof why)) {
        err_node(ld, v, "'%s': %s", path, why);
        return;
    }
    set_str(&ld->sub->handler, h);
    if (!ld->json) {
        ld->sub->handler_line = (int) v->start_mark.line + 1;
        ld->sub->handler_col = (int) v->start_mark.column + 1;
    }
}

static void sub_start(loader *ld, const yaml_node_t *v)
{
    const char *path = sub_path(ld, "start");
    const char *s = scalar_text(ld, v, path, "beginning, end, a sequence or an RFC 3339 time");
    if (!s) {
        return;
    }
    if (strcmp(s, "beginning") == 0) {
        ld->sub->start = MT_START_BEGINNING;
    } else if (strcmp(s, "end") == 0) {
        ld->sub->start = MT_START_END;
    } else if (mt_parse_u64(s, &ld->sub->start_sequence) == MT_OK) {
        ld->sub->start = MT_START_SEQUENCE;
    } else if (mt_time_parse(s, &ld->sub->start_time_us) == MT_OK) {
        ld->sub->start = MT_START_TIME;
    } else {
        err_expected(ld, v, path, "beginning, end, a sequence number or an RFC 3339 time");
    }
}

/* mt_ordering's names, in its order. */
static const char *const ordering_names[] = {"subject", "strict", "none", NULL};

const char *mt_ordering_name(mt_ordering o)
{
    return ordering_names[o];
}

static void sub_ordering(loader *ld, const yaml_node_t *v)
{
    int i = get_choice(ld, v, sub_path(ld, "ordering"), ordering_names);
    if (i >= 0) {
        ld->sub->ordering = (mt_ordering) i;
    }
}

/*
 * Like scalar_text, for a number or a boolean: a quoted scalar is a string
 * in YAML, and in JSON (a definition over HTTP), so "2" is not 2.
 */
static const char *plain_text(loader *ld, const yaml_node_t *n, const char *path,
                              const char *expect)
{
    if (n->type == YAML_SCALAR_NODE && n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        char *got = describe(n);
        err_node(ld, n, "'%s' must be %s, not a quoted string (got %s)", path, expect, got);
        free(got);
        return NULL;
    }
    return scalar_text(ld, n, path, expect);
}

/* Sets *out from a whole number in [min, max]. */
static void get_uint(loader *ld, const yaml_node_t *v, const char *path, uint64_t min,
                     uint64_t max, uint64_t *out)
{
    char expect[96];
    snprintf(expect, sizeof expect, "a whole number from %llu to %llu", (unsigned long long) min,
             (unsigned long long) max);
    const char *s = plain_text(ld, v, path, expect);
    uint64_t n;
    if (!s) {
        return;
    }
    if (mt_parse_u64(s, &n) || n < min || n > max) {
        err_expected(ld, v, path, expect);
        return;
    }
    *out = n;
}

#define HOUR_MS (3600 * 1000ULL)

/*
 * A duration from min to max ms into *ms; 'range' says so in words ("from
 * 0 to 1h"). Every duration has a bound: one of 2^64 ms once passed the
 * check and wrapped when the engine counted it in microseconds.
 */
static void get_duration(loader *ld, const yaml_node_t *v, const char *path, uint64_t min,
                         uint64_t max, const char *range, uint64_t *ms)
{
    char expect[96];
    snprintf(expect, sizeof expect, "a duration %s, such as 200ms, 30s or 5m", range);
    const char *s = scalar_text(ld, v, path, expect);
    uint64_t d = 0;
    if (!s) {
        return;
    }
    /* A bare 0 needs no unit: the range says "from 0". */
    if ((strcmp(s, "0") != 0 && mt_parse_duration(s, &d)) || d < min || d > max) {
        err_expected(ld, v, path, expect);
        return;
    }
    *ms = d;
}

static void sub_workers(loader *ld, const yaml_node_t *v)
{
    uint64_t n = (uint64_t) ld->sub->workers;
    get_uint(ld, v, sub_path(ld, "workers"), 1, 64, &n);
    ld->sub->workers = (int) n;
}

static void retry_max_attempts(loader *ld, const yaml_node_t *v)
{
    uint64_t n = ld->sub->max_attempts;
    get_uint(ld, v, sub_path(ld, "retry.max_attempts"), 1, 1000, &n);
    ld->sub->max_attempts = (uint32_t) n;
}

static void retry_backoff(loader *ld, const yaml_node_t *v)
{
    get_duration(ld, v, sub_path(ld, "retry.backoff"), 0, HOUR_MS, "from 0 to 1h",
                 &ld->sub->backoff_ms);
}

static void retry_max_backoff(loader *ld, const yaml_node_t *v)
{
    get_duration(ld, v, sub_path(ld, "retry.max_backoff"), 0, 24 * HOUR_MS, "from 0 to 24h",
                 &ld->sub->max_backoff_ms);
}

static const key_spec retry_keys[] = {
    {"max_attempts", retry_max_attempts, false},
    {"backoff", retry_backoff, false},
    {"max_backoff", retry_max_backoff, false},
    {NULL, NULL, false},
};

static void sub_retry(loader *ld, const yaml_node_t *v)
{
    if (v->type != YAML_MAPPING_NODE) {
        err_expected(ld, v, sub_path(ld, "retry"), "a mapping");
        return;
    }
    walk_mapping(ld, v, "in retry", retry_keys);
}

static void limits_instructions(loader *ld, const yaml_node_t *v)
{
    get_uint(ld, v, sub_path(ld, "limits.instructions"), 1000, 10000000000ULL,
             &ld->sub->max_instructions);
}

static void limits_memory(loader *ld, const yaml_node_t *v)
{
    get_size(ld, v, sub_path(ld, "limits.memory"), 256 * KIB, "256KiB", 4 * GIB, "4GiB",
             &ld->sub->max_memory);
}

static void limits_time(loader *ld, const yaml_node_t *v)
{
    uint64_t ms = ld->sub->max_time_ms;
    const char *path = sub_path(ld, "limits.time");
    get_duration(ld, v, path, 1000, HOUR_MS, "from 1s to 1h", &ms);
    ld->sub->max_time_ms = ms;
}

static const key_spec limits_keys[] = {
    {"instructions", limits_instructions, false},
    {"memory", limits_memory, false},
    {"time", limits_time, false},
    {NULL, NULL, false},
};

static void sub_limits(loader *ld, const yaml_node_t *v)
{
    if (v->type != YAML_MAPPING_NODE) {
        err_expected(ld, v, sub_path(ld, "limits"), "a mapping");
        return;
    }
    walk_mapping(ld, v, "in limits", limits_keys);
}

/* "HH:MM" or "HH:MM:SS" into seconds after midnight; -1 if malformed. */
static int parse_clock(const char *s)
{
    int h, m, sec = 0, n = 0;
    if (sscanf(s, "%2d:%2d%n", &h, &m, &n) == 2 && (s[n] == '\0' ||
        (s[n] == ':' && sscanf(s + n, ":%2d%n", &sec, &n) == 1))) {
        size_t len = strlen(s);
        if ((len == 5 || len == 8) && h >= 0 && h < 24 && m >= 0 && m < 60 && sec >= 0 &&
            sec < 60) {
            return h * 3600 + m * 60 + sec;
        }
    }
    return -1;
}

static void window_clock(loader *ld, const yaml_node_t *v, const char *key, int *out)
{
    const char *p = sub_path(ld, key);
    const char *s = scalar_text(ld, v, p, "a time of day such as 22:00 or 06:30:00");
    if (s && (*out = parse_clock(s)) < 0) {
        err_expected(ld, v, p, "a time of day such as 22:00 or 06:30:00");
    }
}

static void window_from(loader *ld, const yaml_node_t *v)
{
    window_clock(ld, v, "window.from", &ld->sub->window_from);
}

static void window_to(loader *ld, const yaml_node_t *v)
{
    window_clock(ld, v, "window.to", &ld->sub->window_to);
}

static void window_tz(loader *ld, const yaml_node_t *v)
{
    const char *p = sub_path(ld, "window.tz");
    const char *tz = scalar_text(ld, v, p, "an IANA time zone such as Europe/Paris");
    if (!tz) {
        return;
    }
    char *file = mt_xasprintf("/usr/share/zoneinfo/%s", tz);
    bool ok = strstr(tz, "..") == NULL && tz[0] != '/' && access(file, R_OK) == 0;
    free(file);
    if (!ok) {
        err_node(ld, v, "'%s': unknown time zone '%.64s' (is tzdata installed?)", p, tz);
        return;
    }
    set_str(&ld->sub->window_tz, tz);
}

static const key_spec window_keys[] = {
    {"from", window_from, true},
    {"to", window_to, true},
    {"tz", window_tz, false},
    {NULL, NULL, false},
};

static void sub_priority(loader *ld, const yaml_node_t *v)
{
    static const char *const names[] = {"false", "true", NULL};
    if (!plain_text(ld, v, sub_path(ld, "priority"), "true or false")) {
        return;
    }
    int i = get_choice(ld, v, sub_path(ld, "priority"), names);
    if (i >= 0) {
        ld->sub->priority = i == 1;
    }
}

static void sub_window(loader *ld, const yaml_node_t *v)
{
    if (v->type != YAML_MAPPING_NODE) {
        err_expected(ld, v, sub_path(ld, "window"), "a mapping with from, to and tz");
        return;
    }
    ld->sub->has_window = true;
    walk_mapping(ld, v, "in window", window_keys);
}

static void sub_ttl(loader *ld, const yaml_node_t *v)
{
    get_duration(ld, v, sub_path(ld, "ttl"), 1, 3650 * 24 * HOUR_MS, "from 1ms to 3650d",
                 &ld->sub->ttl_ms);
}

static void sub_on_expiry(loader *ld, const yaml_node_t *v)
{
    static const char *const names[] = {"drop", "dead-letter", NULL};
    int i = get_choice(ld, v, sub_path(ld, "on_expiry"), names);
    if (i >= 0) {
        ld->sub->expiry_dead_letter = i == 1;
    }
}

static void webhook_url(loader *ld, const yaml_node_t *v)
{
    const char *u = scalar_text(ld, v, sub_path(ld, "deliver.webhook.url"), "an http:// URL");
    char why[160];
    if (u && strncmp(u, "http://", 7) != 0) {
        err_node(ld, v, "'%s' must be an http:// URL (got '%.100s')",
                 sub_path(ld, "deliver.webhook.url"), u);
    } else if (u && mt_webhook_check_url(u, why, sizeof why)) {
        err_node(ld, v, "'%s': %s", sub_path(ld, "deliver.webhook.url"), why);
    } else if (u) {
        set_str(&ld->sub->webhook_url, u);
    }
}

static void webhook_secret(loader *ld, const yaml_node_t *v)
{
    const char *sec = scalar_text(ld, v, sub_path(ld, "deliver.webhook.secret"),
                                  "a secret of the form whsec_<base64>");
    unsigned char key[256];
    if (sec && mt_webhook_secret_key(sec, key, sizeof key) < 0) {
        err_node(ld, v, "'%s' must look like whsec_<base64>", sub_path(ld, "deliver.webhook.secret"));
    } else if (sec) {
        set_str(&ld->sub->webhook_secret, sec);
    }
}

static void webhook_concurrency(loader *ld, const yaml_node_t *v)
{
    uint64_t n = (uint64_t) ld->sub->webhook_concurrency;
    get_uint(ld, v, sub_path(ld, "deliver.webhook.concurrency"), 1, 64, &n);
    ld->sub->webhook_concurrency = (int) n;
}

static const key_spec webhook_keys[] = {
    {"url", webhook_url, true},
    {"secret", webhook_secret, false},
    {"concurrency", webhook_concurrency, false},
    {NULL, NULL, false},
};

static void deliver_webhook(loader *ld, const yaml_node_t *v)
{
    if (v->type != YAML_MAPPING_NODE) {
        err_expected(ld, v, sub_path(ld, "deliver.webhook"), "a mapping with url and secret");
        return;
    }
    ld->sub->pull = true;
    walk_mapping(ld, v, "in deliver.webhook", webhook_keys);
}

static const key_spec deliver_keys[] = {
    {"webhook", deliver_webhook, true},
    {NULL, NULL, false},
};

static void sub_deliver(loader *ld, const yaml_node_t *v)
{
    if (v->type == YAML_MAPPING_NODE) {
        walk_mapping(ld, v, "in deliver", deliver_keys);
        return;
    }
    static const char *const names[] = {"lua", "pull", NULL};
    int i = get_choice(ld, v, sub_path(ld, "deliver"), names);
    if (i >= 0) {
        ld->sub->pull = i == 1;
    }
}

static void sub_lease(loader *ld, const yaml_node_t *v)
{
    get_duration(ld, v, sub_path(ld, "lease"), 1, 12 * HOUR_MS, "from 1ms to 12h",
                 &ld->sub->lease_ms);
}

static const key_spec sub_keys[] = {
    {"priority", sub_priority, false},
    {"window", sub_window, false},
    {"deliver", sub_deliver, false},
    {"lease", sub_lease, false},
    {"ttl", sub_ttl, false},
    {"on_expiry", sub_on_expiry, false},
    {"topics", sub_topics, true},
    {"filter", sub_filter, false},
    {"handler", sub_handler, false},
    {"start", sub_start, false},
    {"ordering", sub_ordering, false},
    {"workers", sub_workers, false},
    {"retry", sub_retry, false},
    {"limits", sub_limits, false},
    {NULL, NULL, false},
};

void mt_sub_conf_defaults(mt_sub_conf *c)
{
    c->start = MT_START_BEGINNING;
    c->ordering = MT_ORDER_SUBJECT;
    c->workers = 1;
    c->max_attempts = 5;
    c->backoff_ms = 200;
    c->max_backoff_ms = 30000;
    c->max_instructions = 10000000;
    c->max_memory = 16 * MIB;
    c->max_time_ms = 30 * 1000;
    c->lease_ms = 30000;
    c->webhook_concurrency = 4;
}

/* Whether mapping 'map' has key 'name' (even with a bad value, already reported). */
static bool has_key(loader *ld, const yaml_node_t *map, const char *name)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        if (key_is(yaml_document_get_node(ld->doc, p->key), name)) {
            return true;
        }
    }
    return false;
}

bool mt_topo_stored_fixed(const char *json, size_t len, const char **kind, mt_ordering *ordering,
                          bool *priority)
{
    json_t *def = json_loadb(json, len, JSON_ALLOW_NUL, NULL);
    json_t *deliver = json_object_get(def, "deliver");
    json_t *ord = json_object_get(def, "ordering");
    json_t *prio = json_object_get(def, "priority");
    const char *d = json_string_value(deliver);
    const char *o = json_string_value(ord);
    const char *p = json_string_value(prio);
    if (!deliver || (d && strcmp(d, "lua") == 0)) {
        *kind = "lua";
    } else if (d && strcmp(d, "pull") == 0) {
        *kind = "pull";
    } else {
        *kind = json_object_get(deliver, "webhook") ? "webhook" : NULL;
    }
    int found = -1;
    for (int i = 0; ordering_names[i] && found < 0; i++) {
        if (!ord || (o && strcmp(o, ordering_names[i]) == 0)) {
            found = i;
        }
    }
    *ordering = found < 0 ? MT_ORDER_SUBJECT : (mt_ordering) found;
    /* Also the quoted "true" and "false" an older engine took. */
    bool prio_ok = !prio || json_is_boolean(prio) ||
                   (p && (strcmp(p, "true") == 0 || strcmp(p, "false") == 0));
    *priority = json_is_true(prio) || (p && strcmp(p, "true") == 0);
    bool ok = json_is_object(def) && *kind && found >= 0 && prio_ok;
    json_decref(def);
    return ok;
}

const char *mt_topo_workers_unused(const char *name)
{
    static _Thread_local char msg[256];
    snprintf(msg, sizeof msg, "subscription '%s': workers runs handlers; a pull or webhook "
             "subscription has none (its consumers are its workers)", name);
    return msg;
}

bool mt_topo_valid_sub_name(const char *s, size_t n)
{
    if (n == 0 || n > 64) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(isalnum((unsigned char) s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) {
            return false;
        }
    }
    return true;
}

/* Reads the mapping 'body' of subscription 'c' (defaults already set). */
static void read_sub(loader *ld, mt_sub_conf *c, const yaml_node_t *body)
{
    ld->sub = c;
    char where[96];
    snprintf(where, sizeof where, "in subscription '%s'", c->name);
    walk_mapping(ld, body, where, sub_keys);
    if (!c->pull && !c->handler && !has_key(ld, body, "handler")) {
        err_node(ld, body, "missing required key 'handler' in subscription '%s' (or set "
                 "deliver: pull)", c->name);
    } else if (c->pull && c->handler) {
        err_node(ld, body, "subscription '%s': a pull subscription has no handler", c->name);
    }
    if (c->max_backoff_ms < c->backoff_ms) {
        err_node(ld, body, "subscription '%s': retry.max_backoff is shorter than "
                 "retry.backoff", c->name);
    }
    if (c->pull && c->workers > 1 && !ld->over_http) {
        /* Over HTTP the caller says so: a definition an older engine stored still loads. */
        err_node(ld, body, "%s", mt_topo_workers_unused(c->name));
    }
    ld->sub = NULL;
}

static void section_subscriptions(loader *ld, const yaml_node_t *v)
{
    if (is_null(v)) {
        return;
    }
    if (v->type != YAML_MAPPING_NODE) {
        err_expected(ld, v, "subscriptions", "a mapping of subscription names");
        return;
    }
    mt_topo *t = ld->topo;
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = yaml_document_get_node(ld->doc, p->key);
        const yaml_node_t *body = yaml_document_get_node(ld->doc, p->value);
        if (k->type != YAML_SCALAR_NODE ||
            !mt_topo_valid_sub_name((const char *) k->data.scalar.value, k->data.scalar.length)) {
            char *got = describe(k);
            err_node(ld, k, "a subscription name must be 1 to 64 letters, digits, '_', '-' or "
                     "'.' (got %s)", got);
            free(got);
            continue;
        }
        bool dup = false;
        for (int i = 0; i < t->nsubs; i++) {
            dup |= key_is(k, t->subs[i].name);
        }
        if (dup) {
            err_node(ld, k, "duplicate subscription '%s'", (const char *) k->data.scalar.value);
            continue;
        }
        t->subs = mt_xrealloc(t->subs, (size_t) (t->nsubs + 1) * sizeof *t->subs);
        mt_sub_conf *c = &t->subs[t->nsubs++];
        memset(c, 0, sizeof *c);
        mt_sub_conf_defaults(c);
        c->name = mt_xstrndup((const char *) k->data.scalar.value, k->data.scalar.length);
        if (body->type != YAML_MAPPING_NODE) {
            snprintf(ld->path_buf, sizeof ld->path_buf, "subscriptions.%s", c->name);
            err_expected(ld, body, ld->path_buf, "a mapping");
            continue;
        }
        read_sub(ld, c, body);
    }
}

static void sub_conf_clear(mt_sub_conf *c)
{
    free(c->name);
    for (int i = 0; i < c->ntopics; i++) {
        free(c->topics[i]);
    }
    free(c->topics);
    free(c->filter_json);
    free(c->handler);
    free(c->handler_src);
    free(c->webhook_url);
    free(c->webhook_secret);
    free(c->window_tz);
}

/* ---- top level ---- */

static void section_version(loader *ld, const yaml_node_t *v)
{
    uint64_t version = 0;
    if (v->type == YAML_SCALAR_NODE && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        mt_parse_u64((const char *) v->data.scalar.value, &version) == MT_OK) {
        if (version != 1) {
            err_node(ld, v, "unsupported version %llu; this engine reads version 1",
                     (unsigned long long) version);
        }
        return;
    }
    if (v->type == YAML_SCALAR_NODE && v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        char *got = describe(v);
        err_node(ld, v, "'version' must be the integer 1, not a quoted string (got %s)", got);
        free(got);
        return;
    }
    err_expected(ld, v, "version", "the integer 1");
}

/*
 * Adding a section: write its value_fn and replace its NULL here. A NULL
 * entry reserves a key that later versions read, so an old engine refuses it
 * by name instead of calling it an unknown key.
 */
static const key_spec top_keys[] = {
    {"version", section_version, true},
    {"engine", section_engine, false},
    {"subscriptions", section_subscriptions, false},
    {"projections", NULL, false},
    {"sagas", NULL, false},
    {"commands", NULL, false},
    {"security", NULL, false},
    {"bridges", NULL, false},
    {NULL, NULL, false},
};

static void load_root(loader *ld, const yaml_node_t *root)
{
    if (root->type != YAML_MAPPING_NODE) {
        char *got = describe(root);
        err_node(ld, root, "the top level must be a mapping with 'version: 1' (got %s)", got);
        free(got);
        return;
    }
    walk_mapping(ld, root, "at top level", top_keys);
}

/* ---- reading and parsing the file ---- */

/* Reads all of 'path'; on failure adds one "FILE: error: ..." line. */
static mt_err read_file(const char *path, mt_buf *b, mt_topo_errs *errs)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errs_insert(errs, errs->count, mt_xasprintf("%s: error: cannot open: %s", path,
                                                    strerror(errno)));
        return MT_EIO;
    }
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b->len + n > MAX_FILE_SIZE) {
            fclose(f);
            errs_insert(errs, errs->count,
                        mt_xasprintf("%s: error: file is larger than %uMiB; a topology "
                                     "file is expected to be small", path,
                                     MAX_FILE_SIZE >> 20));
            return MT_ECONFIG;
        }
        mt_buf_add(b, chunk, n);
    }
    if (ferror(f)) {
        int e = errno;
        fclose(f);
        errs_insert(errs, errs->count,
                    mt_xasprintf("%s: error: cannot read: %s", path, strerror(e)));
        return MT_EIO;
    }
    fclose(f);
    return MT_OK;
}

/* libyaml reports encoding problems as a byte offset; turn it into a mark. */
static yaml_mark_t mark_of_offset(const mt_buf *b, size_t offset)
{
    yaml_mark_t m = {0, 0, 0};
    for (size_t i = 0; i < offset && i < b->len; i++) {
        unsigned char c = (unsigned char) b->data[i];
        if (c == '\n') {
            m.line++;
            m.column = 0;
        } else if ((c & 0xC0) != 0x80) {
            m.column++;
        }
    }
    m.index = offset;
    return m;
}

static void err_syntax(loader *ld, const yaml_parser_t *parser, const mt_buf *b)
{
    const char *problem = parser->problem ? parser->problem : "malformed YAML";
    switch (parser->error) {
    case YAML_MEMORY_ERROR:
        /* The input is capped at MAX_FILE_SIZE, so this is the mt_x* case. */
        fprintf(stderr, "moontide: out of memory parsing %s\n", ld->path);
        abort();
    case YAML_READER_ERROR:
        if (parser->problem_value != -1) {
            err_at(ld, -1, mark_of_offset(b, parser->problem_offset), "%s (byte 0x%02X)",
                   problem, (unsigned) parser->problem_value);
        } else {
            err_at(ld, -1, mark_of_offset(b, parser->problem_offset), "%s", problem);
        }
        break;
    default:
        err_at(ld, -1, parser->problem_mark, "%s", problem);
        break;
    }
}

static void fill_defaults(mt_topo *t)
{
    t->engine.data_dir = mt_xstrdup("./data");
    t->engine.listen_host = mt_xstrdup("127.0.0.1");
    t->engine.listen_port = 8080;
    t->engine.map_size = GIB;
    t->engine.durability = MT_DURABILITY_FSYNC;
    t->engine.max_body = MIB;
    t->engine.wal_size = 64 * MIB;
    t->engine.log_level = mt_xstrdup("info");
}

mt_topo *mt_topo_new_default(void)
{
    mt_topo *t = mt_xcalloc(1, sizeof *t);
    fill_defaults(t);
    return t;
}

/*
 * Whether the YAML in 'input' nests collections deeper than NEST_MAX,
 * told by its events before any document is built: libyaml's scanner
 * takes time in proportion to the depth for every token, so a 200 KB file
 * of '[' kept it busy for minutes. Where it is too deep goes in *at. A
 * syntax error ends the look (false): the load that follows reports it.
 */
static bool nested_too_deep(const unsigned char *input, size_t len, yaml_mark_t *at)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fprintf(stderr, "moontide: out of memory parsing YAML\n");
        abort();
    }
    yaml_parser_set_input_string(&parser, input, len);
    int depth = 0;
    bool deep = false, done = false;
    while (!done && !deep) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            break;
        }
        if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) {
            deep = ++depth > NEST_MAX;
            *at = ev.start_mark;
        } else if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return deep;
}

/* Parses the buffer's single YAML document into ld->topo, reporting problems. */
static void parse_buffer(loader *ld, mt_buf *b)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fprintf(stderr, "moontide: out of memory parsing %s\n", ld->path);
        abort();
    }
    /* mt_buf_cstr: an empty file has no buffer yet, and libyaml wants one. */
    const unsigned char *input = (const unsigned char *) mt_buf_cstr(b);
    yaml_mark_t deep_at;
    if (nested_too_deep(input, b->len, &deep_at)) {
        err_at(ld, -1, deep_at, "nested deeper than %d levels", NEST_MAX);
        yaml_parser_delete(&parser);
        return;
    }
    yaml_parser_set_input_string(&parser, input, b->len);

    yaml_document_t doc;
    if (!yaml_parser_load(&parser, &doc)) {
        /* libyaml cannot resume after a syntax error: this is the only error. */
        err_syntax(ld, &parser, b);
        yaml_parser_delete(&parser);
        return;
    }
    ld->doc = &doc;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    bool has_root = root != NULL;
    if (!root || is_null(root)) {
        yaml_mark_t start = {0, 0, 0};
        err_at(ld, -1, start, "empty topology file; expected a mapping with 'version: 1'");
    } else {
        load_root(ld, root);
    }
    ld->doc = NULL;
    yaml_document_delete(&doc);

    if (has_root) {
        /* A second document would be silently ignored otherwise. */
        yaml_document_t extra;
        if (!yaml_parser_load(&parser, &extra)) {
            err_syntax(ld, &parser, b);
        } else {
            if (yaml_document_get_root_node(&extra)) {
                err_at(ld, -1, extra.start_mark,
                       "a topology file holds one YAML document; found a second one");
            }
            yaml_document_delete(&extra);
        }
    }
    yaml_parser_delete(&parser);
}

mt_err mt_topo_load(const char *path, mt_topo **out, mt_topo_errs *errs)
{
    return mt_topo_load_compiling(path, NULL, out, errs);
}

mt_err mt_topo_load_compiling(const char *path, mt_topo_compile_fn compile, mt_topo **out,
                              mt_topo_errs *errs)
{
    mt_assert(out);
    *out = NULL;
    mt_assert(path && errs);

    int first_err = errs->count;
    mt_buf b;
    mt_buf_init(&b);
    mt_err rc = read_file(path, &b, errs);
    if (rc) {
        mt_buf_free(&b);
        return rc;
    }

    mt_topo *t = mt_topo_new_default();
    t->path = mt_xstrdup(path);
    loader ld = {.path = path, .doc = NULL, .errs = errs, .topo = t, .compile = compile};
    parse_buffer(&ld, &b);
    mt_buf_free(&b);
    free(ld.fnodes);

    if (errs->count > first_err) {
        mt_topo_free(t);
        return MT_ECONFIG;
    }
    *out = t;
    return MT_OK;
}

/* ---- one subscription on its own (runtime definitions) ---- */

static void yaml_oom(void)
{
    fprintf(stderr, "moontide: out of memory building a definition\n");
    abort();
}

/* Notes where node 'id' came from (see json_origin). */
static void json_note(loader *ld, int id, int parent, int key, size_t index)
{
    mt_assert(id > 0 && (size_t) id == ld->njson + 1);
    if (ld->njson == ld->capjson) {
        ld->capjson = ld->capjson ? 2 * ld->capjson : 64;
        ld->json = mt_xrealloc(ld->json, ld->capjson * sizeof *ld->json);
    }
    ld->json[id - 1] = (json_origin){parent, key, index};
    ld->njson = (size_t) id;
}

/*
 * Adds JSON value 'v' to 'doc' as the YAML that means the same: a string
 * as a quoted scalar (so it stays text), a number, boolean or null as a
 * plain scalar (a number written as a filter compares it), containers
 * likewise, parent before children. Returns the node's id. A collection
 * nested deeper than NEST_MAX becomes a null, and *too_deep its id.
 */
static int json_add(loader *ld, yaml_document_t *doc, const json_t *v, int parent, int key,
                    size_t index, int depth, int *too_deep)
{
    int id;
    bool container = json_is_object(v) || json_is_array(v);
    if (container && depth > NEST_MAX) {
        id = yaml_document_add_scalar(doc, NULL, (yaml_char_t *) "null", 4,
                                      YAML_PLAIN_SCALAR_STYLE);
        if (!id) {
            yaml_oom();
        }
        json_note(ld, id, parent, key, index);
        if (!*too_deep) {
            *too_deep = id;
        }
        return id;
    }
    if (json_is_object(v)) {
        id = yaml_document_add_mapping(doc, NULL, YAML_FLOW_MAPPING_STYLE);
        if (!id) {
            yaml_oom();
        }
        json_note(ld, id, parent, key, index);
        const char *k;
        json_t *x;
        json_object_foreach((json_t *) v, k, x) {
            size_t klen = mt_json_key_len(k);
            int kid = yaml_document_add_scalar(doc, NULL, (const yaml_char_t *) k, (int) klen,
                                               YAML_DOUBLE_QUOTED_SCALAR_STYLE);
            if (!kid) {
                yaml_oom();
            }
            json_note(ld, kid, id, kid, 0);
            int vid = json_add(ld, doc, x, id, kid, 0, depth + 1, too_deep);
            if (!yaml_document_append_mapping_pair(doc, id, kid, vid)) {
                yaml_oom();
            }
        }
        return id;
    }
    if (json_is_array(v)) {
        id = yaml_document_add_sequence(doc, NULL, YAML_FLOW_SEQUENCE_STYLE);
        if (!id) {
            yaml_oom();
        }
        json_note(ld, id, parent, key, index);
        for (size_t i = 0; i < json_array_size(v); i++) {
            int item = json_add(ld, doc, json_array_get(v, i), id, 0, i, depth + 1, too_deep);
            if (!yaml_document_append_sequence_item(doc, id, item)) {
                yaml_oom();
            }
        }
        return id;
    }
    char text[MT_FILTER_TEXT_MAX];
    const char *s = text;
    size_t len;
    yaml_scalar_style_t style = YAML_PLAIN_SCALAR_STYLE;
    if (json_is_string(v)) {
        s = json_string_value(v);
        len = json_string_length(v);
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    } else if (mt_filter_number_text(v, text)) {
        len = strlen(text);
    } else {
        s = "null";
        len = 4;
    }
    id = yaml_document_add_scalar(doc, NULL, (const yaml_char_t *) s, (int) len, style);
    if (!id) {
        yaml_oom();
    }
    json_note(ld, id, parent, key, index);
    return id;
}

/*
 * Reads definition 'def', parsed from JSON, into 'c': as a document made
 * of its values (json_add), with errors placed by JSON Pointer.
 */
static void read_json_sub(loader *ld, mt_sub_conf *c, const json_t *def)
{
    yaml_document_t doc;
    if (!yaml_document_initialize(&doc, NULL, NULL, NULL, 1, 1)) {
        yaml_oom();
    }
    int too_deep = 0;
    json_add(ld, &doc, def, 0, 0, 0, 1, &too_deep);
    ld->doc = &doc;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (too_deep) {
        err_node(ld, yaml_document_get_node(&doc, too_deep), "nested deeper than %d levels",
                 NEST_MAX);
    } else if (root->type != YAML_MAPPING_NODE) {
        err_node(ld, root, "a subscription definition must be an object with at least 'topics'");
    } else {
        read_sub(ld, c, root);
    }
    ld->doc = NULL;
    yaml_document_delete(&doc);
}

static mt_err parse_sub(const char *name, const char *text, size_t len, const char *origin,
                        bool files_may_be_gone, mt_sub_conf **out, mt_topo_errs *errs)
{
    *out = NULL;
    int first_err = errs->count;
    if (!mt_topo_valid_sub_name(name, strlen(name))) {
        errs_insert(errs, errs->count,
                    mt_xasprintf("%s: error: a subscription name must be 1 to 64 letters, "
                                 "digits, '_', '-' or '.'", origin));
        return MT_ECONFIG;
    }
    if (len > MAX_FILE_SIZE) {
        errs_insert(errs, errs->count, mt_xasprintf("%s: error: the definition is larger than "
                                                    "%uMiB", origin, MAX_FILE_SIZE >> 20));
        return MT_ECONFIG;
    }
    mt_sub_conf *c = mt_xcalloc(1, sizeof *c);
    mt_sub_conf_defaults(c);
    c->name = mt_xstrdup(name);
    mt_topo *t = mt_topo_new_default();
    loader ld = {.path = origin, .doc = NULL, .errs = errs, .topo = t,
                 .files_may_be_gone = files_may_be_gone, .over_http = true};
    /*
     * JSON (a PUT body, a stored definition) is read by jansson, so it means
     * exactly what JSON says: YAML would refuse some valid JSON (surrogate
     * pairs, a raw U+FFFE, keys over 1024 bytes) and alter some (a raw
     * U+0085). Anything else is YAML.
     */
    json_error_t jerr;
    json_t *def = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (def) {
        read_json_sub(&ld, c, def);
        json_decref(def);
    } else if (json_error_code(&jerr) == json_error_duplicate_key) {
        yaml_mark_t at = {0, (size_t) (jerr.line > 0 ? jerr.line - 1 : 0),
                          (size_t) (jerr.column > 0 ? jerr.column - 1 : 0)};
        err_at(&ld, -1, at, "%s", jerr.text);
    } else {
        yaml_parser_t parser;
        if (!yaml_parser_initialize(&parser)) {
            fprintf(stderr, "moontide: out of memory parsing %s\n", origin);
            abort();
        }
        yaml_parser_set_input_string(&parser, (const unsigned char *) text, len);
        yaml_document_t doc;
        yaml_mark_t deep_at;
        if (nested_too_deep((const unsigned char *) text, len, &deep_at)) {
            err_at(&ld, -1, deep_at, "nested deeper than %d levels", NEST_MAX);
        } else if (!yaml_parser_load(&parser, &doc)) {
            mt_buf b = {(char *) text, len, len};
            err_syntax(&ld, &parser, &b);
        } else {
            ld.doc = &doc;
            const yaml_node_t *root = yaml_document_get_root_node(&doc);
            if (!root || root->type != YAML_MAPPING_NODE) {
                yaml_mark_t start = {0, 0, 0};
                err_at(&ld, -1, root ? root->start_mark : start,
                       "a subscription definition must be an object with at least 'topics'");
            } else {
                read_sub(&ld, c, root);
            }
            yaml_document_delete(&doc);
        }
        yaml_parser_delete(&parser);
    }
    free(ld.json);
    free(ld.fnodes);
    mt_topo_free(t);
    if (errs->count > first_err) {
        mt_sub_conf_free(c);
        return MT_ECONFIG;
    }
    *out = c;
    return MT_OK;
}

mt_err mt_topo_parse_sub(const char *name, const char *text, size_t len, const char *origin,
                         mt_sub_conf **out, mt_topo_errs *errs)
{
    return parse_sub(name, text, len, origin, false, out, errs);
}

mt_err mt_topo_parse_stored_sub(const char *name, const char *text, size_t len,
                                const char *origin, mt_sub_conf **out, mt_topo_errs *errs)
{
    return parse_sub(name, text, len, origin, true, out, errs);
}

static char **strv_copy(char *const *v, int n)
{
    char **r = mt_xcalloc((size_t) (n ? n : 1), sizeof *r);
    for (int i = 0; i < n; i++) {
        r[i] = mt_xstrdup(v[i]);
    }
    return r;
}

static char *str_copy(const char *s)
{
    return s ? mt_xstrdup(s) : NULL;
}

mt_sub_conf *mt_sub_conf_copy(const mt_sub_conf *c)
{
    mt_sub_conf *r = mt_xmalloc(sizeof *r);
    *r = *c;
    r->name = str_copy(c->name);
    r->topics = strv_copy(c->topics, c->ntopics);
    r->filter_json = str_copy(c->filter_json);
    r->handler = str_copy(c->handler);
    r->handler_src = NULL; /* a reload's, for the runtime it builds only */
    r->handler_src_len = 0;
    r->webhook_url = str_copy(c->webhook_url);
    r->webhook_secret = str_copy(c->webhook_secret);
    r->window_tz = str_copy(c->window_tz);
    return r;
}

void mt_sub_conf_free(mt_sub_conf *c)
{
    if (c) {
        sub_conf_clear(c);
        free(c);
    }
}

/* ---- listen addresses ---- */

/* mt_topo_parse_listen, plus a reason for the topology error message. */
static mt_err parse_listen(const char *s, char **host, uint16_t *port, const char **why)
{
    *host = NULL;
    *port = 0;
    *why = "";
    if (!s) {
        *why = "missing address";
        return MT_EINVAL;
    }
    const char *h = s;
    size_t hlen;
    const char *colon;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close) {
            *why = "missing ']' after an IPv6 address";
            return MT_EINVAL;
        }
        h = s + 1;
        hlen = (size_t) (close - h);
        colon = close + 1;
        if (*colon != ':') {
            *why = "missing ':port'";
            return MT_EINVAL;
        }
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            *why = "missing ':port'";
            return MT_EINVAL;
        }
        hlen = (size_t) (colon - s);
        if (memchr(s, ':', hlen)) {
            *why = "an IPv6 address needs brackets, as in [::1]:8080";
            return MT_EINVAL;
        }
    }
    if (hlen == 0) {
        *why = "empty host";
        return MT_EINVAL;
    }
    uint64_t p;
    if (colon[1] == '\0') {
        *why = "missing port";
        return MT_EINVAL;
    }
    if (mt_parse_u64(colon + 1, &p) || p > 65535) {
        *why = "the port must be a number from 0 to 65535";
        return MT_EINVAL;
    }
    *host = mt_xstrndup(h, hlen);
    *port = (uint16_t) p;
    return MT_OK;
}

mt_err mt_topo_parse_listen(const char *s, char **host, uint16_t *port)
{
    const char *why;
    return parse_listen(s, host, port, &why);
}

/* ---- freeing ---- */

void mt_topo_free(mt_topo *t)
{
    if (!t) {
        return;
    }
    free(t->engine.data_dir);
    free(t->engine.listen_host);
    free(t->engine.log_level);
    for (int i = 0; i < t->nsubs; i++) {
        sub_conf_clear(&t->subs[i]);
    }
    free(t->subs);
    free(t->path);
    free(t);
}

void mt_topo_errs_free(mt_topo_errs *errs)
{
    if (!errs) {
        return;
    }
    for (int i = 0; i < errs->count; i++) {
        free(errs->lines[i]);
    }
    free(errs->lines);
    errs->lines = NULL;
    errs->count = 0;
}

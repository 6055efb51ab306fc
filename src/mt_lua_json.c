/*
 * mt_lua_json.c - part of the mt_lua module: the JSON bridge between Lua
 * values and JSON text (mt_lua_push_json*, mt_lua_to_json) and the
 * moontide.json module handlers require. Its contract is in mt_lua_json.h
 * (the value mapping in mt_lua.h, which includes it); what it shares with
 * mt_lua.c is in mt_lua_int.h. Runs on the thread that
 * owns the lua_State (the writer, or a worker).
 */
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_lua.h"
#include "mt_lua_event.h"
#include "mt_lua_int.h"
#include "mt_lua_json.h"
#include "mt_util.h"

/*
 * Registry keys by address, so the encoder finds the markers with
 * lua_rawgetp, which never allocates (pushing a key string could).
 */
static char null_tag;   /* its address is json.null */
static char array_key;  /* registry[&array_key] = the "moontide.json.array" metatable */
static char object_key; /* registry[&object_key] = the "moontide.json.object" metatable */
static char lazy_key;   /* registry[&lazy_key] = the metatable of objects read when first used */
static char held_key;   /* in such an object: the userdata holding its jansson value */
static char holder_key; /* registry[&holder_key] = the holders' metatable (__gc) */

#define PATH_MAX_LEN 256 /* bytes of "$.a[2].b" kept for messages */
#define KEY_SHOWN 40     /* bytes of a key shown in a message */

void mt_lua_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, &null_tag);
}

bool mt_lua_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &null_tag;
}

/* ---- Lua to JSON ---- */

/*
 * The encoder never raises: it reads with raw access and lua_next and
 * allocates no Lua memory, so it can run outside a protected call and
 * while it holds jansson values.
 */
typedef struct enc {
    lua_State *L;
    int array_mt;                            /* stack index of the array marker */
    int object_mt;                           /* stack index of the object marker */
    const void *open[MT_LUA_JSON_MAX_DEPTH]; /* tables being encoded, outermost first */
    int depth;                               /* entries in 'open' */
    char path[PATH_MAX_LEN];                 /* where we are, "$.a[2]" (Lua indices) */
    size_t plen;
    char *err;
    size_t errlen;
    int digits;                              /* the most any real needs (real_digits), 0 */
    bool want_digits;
} enc;

/* Digits, from 15 to 17, that write d so that it reads back exactly. */
static int real_digits(double d)
{
    for (int p = 15; p < 17; p++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%.*g", p, d);
        if (strtod(buf, NULL) == d) {
            return p;
        }
    }
    return 17;
}

typedef struct member {
    const char *key; /* borrowed from the table's key, which stays put while we encode */
    size_t klen;
    json_t *value; /* owned until moved into the object */
} member;

static mt_err fail(enc *e, mt_err rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static mt_err fail(enc *e, mt_err rc, const char *fmt, ...)
{
    if (!e->errlen) {
        return rc;
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(e->err, e->errlen, "%s: %s", e->path, msg);
    return rc;
}

/* Copies up to KEY_SHOWN bytes of a key, printable ASCII only, so messages stay valid text. */
static void show_bytes(char *out, size_t outlen, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < outlen; i++) {
        if (i == KEY_SHOWN) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char c = (unsigned char) s[i];
        out[o++] = c >= 0x20 && c < 0x7f ? (char) c : '?';
    }
    out[o] = 0;
}

/* Describes the key at 'idx' for a message: 3, 1.5, 'name', true, a function. */
static void key_text(lua_State *L, int idx, char *buf, size_t n)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            snprintf(buf, n, "%lld", (long long) lua_tointeger(L, idx));
        } else {
            snprintf(buf, n, "%.14g", (double) lua_tonumber(L, idx));
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        char shown[KEY_SHOWN + 8];
        show_bytes(shown, sizeof shown, s, len);
        snprintf(buf, n, "'%s'", shown);
        break;
    }
    case LUA_TBOOLEAN: snprintf(buf, n, "%s", lua_toboolean(L, idx) ? "true" : "false"); break;
    default: snprintf(buf, n, "a %s", luaL_typename(L, idx)); break;
    }
}

static size_t path_push_index(enc *e, lua_Integer i)
{
    size_t old = e->plen;
    int n = snprintf(e->path + old, sizeof e->path - old, "[%lld]", (long long) i);
    e->plen = n < 0 || (size_t) n >= sizeof e->path - old ? sizeof e->path - 1 : old + (size_t) n;
    return old;
}

static size_t path_push_key(enc *e, const char *k, size_t klen)
{
    size_t old = e->plen;
    char shown[KEY_SHOWN + 8];
    show_bytes(shown, sizeof shown, k, klen);
    int n = snprintf(e->path + old, sizeof e->path - old, ".%s", shown);
    e->plen = n < 0 || (size_t) n >= sizeof e->path - old ? sizeof e->path - 1 : old + (size_t) n;
    return old;
}

static void path_pop(enc *e, size_t old)
{
    e->plen = old;
    e->path[old] = 0;
}

static mt_err enc_value(enc *e, int idx, json_t **out);

static int member_cmp(const void *a, const void *b)
{
    const member *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    if (c) {
        return c;
    }
    return x->klen < y->klen ? -1 : x->klen > y->klen;
}

static mt_err enc_array(enc *e, int idx, lua_Integer n, json_t **out)
{
    lua_State *L = e->L;
    json_t *arr = json_array();
    if (!arr) {
        return fail(e, MT_ENOMEM, "out of memory");
    }
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        size_t old = path_push_index(e, i);
        json_t *v;
        mt_err rc = enc_value(e, -1, &v);
        path_pop(e, old);
        lua_pop(L, 1);
        if (rc) {
            json_decref(arr);
            return rc;
        }
        if (json_array_append_new(arr, v)) {
            json_decref(arr);
            return fail(e, MT_ENOMEM, "out of memory");
        }
    }
    *out = arr;
    return MT_OK;
}

/* Members go in in byte order of their keys, so every dump of the result is the same. */
static mt_err enc_object(enc *e, int idx, size_t nkeys, json_t **out)
{
    lua_State *L = e->L;
    member *m = NULL;
    size_t count = 0;
    json_t *obj = NULL;
    mt_err rc = MT_OK;
    if (nkeys) {
        m = mt_trymalloc(nkeys * sizeof *m);
        if (!m) {
            return fail(e, MT_ENOMEM, "out of memory");
        }
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen); /* a string: the caller checked */
        mt_assert(count < nkeys);
        if (!mt_utf8_valid(k, klen)) {
            lua_pop(L, 2);
            rc = fail(e, MT_EINVAL, "object key is not valid UTF-8");
            goto done;
        }
#if JANSSON_VERSION_HEX < 0x020e00
        if (memchr(k, 0, klen)) {
            lua_pop(L, 2);
            rc = fail(e, MT_EINVAL, "object key contains a NUL byte");
            goto done;
        }
#endif
        size_t old = path_push_key(e, k, klen);
        json_t *v;
        rc = enc_value(e, -1, &v);
        path_pop(e, old);
        lua_pop(L, 1);
        if (rc) {
            lua_pop(L, 1);
            goto done;
        }
        m[count].key = k;
        m[count].klen = klen;
        m[count].value = v;
        count++;
    }
    if (count > 1) {
        qsort(m, count, sizeof *m, member_cmp);
    }
    obj = json_object();
    if (!obj) {
        rc = fail(e, MT_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *v = m[i].value;
        m[i].value = NULL; /* the set functions take it even when they fail */
#if JANSSON_VERSION_HEX >= 0x020e00
        int bad = json_object_setn_new_nocheck(obj, m[i].key, m[i].klen, v);
#else
        int bad = json_object_set_new_nocheck(obj, m[i].key, v);
#endif
        if (bad) {
            rc = fail(e, MT_ENOMEM, "out of memory");
            goto done;
        }
    }
    *out = obj;
    obj = NULL;
done:
    for (size_t i = 0; i < count; i++) {
        json_decref(m[i].value);
    }
    free(m);
    json_decref(obj);
    return rc;
}

static mt_err enc_table(enc *e, int idx, json_t **out)
{
    lua_State *L = e->L;
    idx = lua_absindex(L, idx);
    const void *p = lua_topointer(L, idx);
    for (int i = 0; i < e->depth; i++) {
        if (e->open[i] == p) {
            return fail(e, MT_EINVAL, "cycle: the table contains itself");
        }
    }
    if (e->depth == MT_LUA_JSON_MAX_DEPTH) {
        return fail(e, MT_EINVAL, "nesting deeper than %d levels", MT_LUA_JSON_MAX_DEPTH);
    }
    if (!lua_checkstack(L, 4)) {
        return fail(e, MT_ENOMEM, "Lua stack exhausted");
    }
    enum { UNMARKED, ARRAY, OBJECT } kind = UNMARKED;
    bool has_mt = lua_getmetatable(L, idx);
    if (has_mt) {
        if (lua_rawequal(L, -1, e->array_mt)) {
            kind = ARRAY;
        } else if (lua_rawequal(L, -1, e->object_mt)) {
            kind = OBJECT;
        }
        lua_pop(L, 1);
    }
    if (has_mt && kind == UNMARKED && mt_lua_json_is_lazy(L, idx)) {
        mt_err rc = mt_lua_json_complete(L, idx);
        if (rc) {
            return rc == MT_ENOMEM
                       ? fail(e, rc, "out of memory reading the event's data")
                       : fail(e, rc, "nesting deeper than %d levels", MT_LUA_JSON_MAX_DEPTH);
        }
        kind = OBJECT; /* what it is now marked as */
    } else if (has_mt && kind == UNMARKED && !mt_lua_event_complete(L, idx)) {
        return fail(e, MT_ENOMEM, "out of memory reading the event's attributes");
    }

    /* Classify the keys: integers (array indices), strings, nothing else. */
    size_t nint = 0, nstr = 0;
    lua_Integer lo = 0, hi = 0, first_int = 0;
    char first_str[KEY_SHOWN + 8] = "";
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            if (!nstr++) {
                key_text(L, -1, first_str, sizeof first_str);
            }
        } else if (lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (!nint++) {
                first_int = lo = hi = k;
            }
            lo = k < lo ? k : lo;
            hi = k > hi ? k : hi;
        } else {
            char kt[64];
            key_text(L, -1, kt, sizeof kt);
            lua_pop(L, 1);
            return fail(e, MT_EINVAL, "key %s is neither a string nor an array index", kt);
        }
    }
    if (kind == UNMARKED && nint && nstr) {
        return fail(e, MT_EINVAL, "table mixes array index %lld and string key %s",
                    (long long) first_int, first_str);
    }
    if (kind == OBJECT && nint) {
        return fail(e, MT_EINVAL, "object has the non-string key %lld", (long long) first_int);
    }
    if (kind == ARRAY && nstr) {
        return fail(e, MT_EINVAL, "array has the string key %s", first_str);
    }
    bool array = kind == ARRAY || (kind == UNMARKED && nint);
    if (array && nint && (lo < 1 || (uint64_t) hi > nint)) {
        return fail(e, MT_EINVAL, "sparse array: key %lld in a table of %zu keys",
                    (long long) (lo < 1 ? lo : hi), nint);
    }
    e->open[e->depth++] = p;
    mt_err rc = array ? enc_array(e, idx, (lua_Integer) nint, out) : enc_object(e, idx, nstr, out);
    e->depth--;
    return rc;
}

static mt_err enc_value(enc *e, int idx, json_t **out)
{
    lua_State *L = e->L;
    *out = NULL;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: *out = json_null(); break;
    case LUA_TBOOLEAN: *out = json_boolean(lua_toboolean(L, idx)); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            *out = json_integer((json_int_t) lua_tointeger(L, idx));
        } else {
            double d = (double) lua_tonumber(L, idx);
            if (isnan(d)) {
                return fail(e, MT_EINVAL, "cannot encode NaN");
            }
            if (isinf(d)) {
                return fail(e, MT_EINVAL, "cannot encode %s", d > 0 ? "inf" : "-inf");
            }
            if (e->want_digits) {
                int p = real_digits(d);
                e->digits = p > e->digits ? p : e->digits;
            }
            *out = json_real(d);
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (!mt_utf8_valid(s, n)) {
            return fail(e, MT_EINVAL, "string is not valid UTF-8");
        }
        *out = json_stringn_nocheck(s, n);
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == &null_tag) {
            *out = json_null();
            break;
        }
        return fail(e, MT_EINVAL, "cannot encode a userdata value");
    case LUA_TTABLE: return enc_table(e, idx, out);
    default: return fail(e, MT_EINVAL, "cannot encode a %s value", luaL_typename(L, idx));
    }
    return *out ? MT_OK : fail(e, MT_ENOMEM, "out of memory");
}

mt_err mt_lua_to_json(lua_State *L, int idx, json_t **out, size_t *real_flag, char *err,
                      size_t errlen)
{
    *out = NULL;
    if (errlen) {
        err[0] = 0;
    }
    enc ctx = {0};
    enc *e = &ctx;
    e->want_digits = real_flag != NULL;
    e->L = L;
    e->err = err;
    e->errlen = errlen;
    strcpy(e->path, "$");
    e->plen = 1;
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    mt_err rc;
    if (!lua_checkstack(L, 2)) {
        rc = fail(e, MT_ENOMEM, "Lua stack exhausted");
    } else {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
        e->array_mt = lua_gettop(L);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &object_key);
        e->object_mt = lua_gettop(L);
        rc = enc_value(e, idx, out);
    }
    lua_settop(L, top);
    if (real_flag) {
        *real_flag = e->digits ? JSON_REAL_PRECISION(e->digits) : 0;
    }
    return rc;
}

/* ---- JSON to Lua ---- */

/* Pushes 'j', nested in 'depth' containers. Raises on memory or depth. [-0, +1] */
static void push_value(lua_State *L, const json_t *j, int depth)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (depth >= MT_LUA_JSON_MAX_DEPTH) {
            luaL_error(L, "nesting deeper than %d levels", MT_LUA_JSON_MAX_DEPTH);
        }
        luaL_checkstack(L, 3, "JSON nesting");
        size_t n = json_object_size(j);
        lua_createtable(L, 0, n > INT32_MAX ? INT32_MAX : (int) n);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &object_key);
        lua_setmetatable(L, -2);
        for (void *it = json_object_iter((json_t *) j); it;
             it = json_object_iter_next((json_t *) j, it)) {
#if JANSSON_VERSION_HEX >= 0x020e00
            lua_pushlstring(L, json_object_iter_key(it), json_object_iter_key_len(it));
#else
            lua_pushstring(L, json_object_iter_key(it));
#endif
            push_value(L, json_object_iter_value(it), depth + 1);
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        if (depth >= MT_LUA_JSON_MAX_DEPTH) {
            luaL_error(L, "nesting deeper than %d levels", MT_LUA_JSON_MAX_DEPTH);
        }
        luaL_checkstack(L, 3, "JSON nesting");
        size_t n = json_array_size(j);
        lua_createtable(L, n > INT32_MAX ? INT32_MAX : (int) n, 0);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
        lua_setmetatable(L, -2);
        for (size_t i = 0; i < n; i++) {
            push_value(L, json_array_get(j, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer) i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer) json_integer_value(j)); break;
    case JSON_REAL: lua_pushnumber(L, (lua_Number) json_real_value(j)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    case JSON_NULL: mt_lua_push_null(L); break;
    }
}



/* [-1, +1]: the json_t as a light userdata, its Lua value */
static int l_json_push(lua_State *L)
{
    const json_t *j = lua_touserdata(L, 1);
    lua_pop(L, 1);
    push_value(L, j, 0);
    return 1;
}

mt_err mt_lua_push_json(lua_State *L, const json_t *j)
{
    mt_assert(j);
    if (!lua_checkstack(L, 2)) {
        return MT_ENOMEM;
    }
    lua_pushcfunction(L, l_json_push);
    lua_pushlightuserdata(L, (void *) j);
    int st = lua_pcall(L, 1, 1, 0);
    if (st == LUA_OK) {
        return MT_OK;
    }
    lua_pop(L, 1);
    return st == LUA_ERRMEM ? MT_ENOMEM : MT_EINVAL;
}

/* ---- objects read when first used ---- */

/* The holder of a lazy object's value, under held_key in the object's table. */
typedef struct lazy_obj {
    json_t *v;    /* owned; NULL once the object is complete */
    uint64_t put; /* bit i: member i (in jansson's order) was put in the table */
} lazy_obj;

#define LAZY_MAX_MEMBERS 64 /* one bit each in lazy_obj.put */

static int l_lazy_gc(lua_State *L)
{
    lazy_obj *lo = lua_touserdata(L, 1);
    json_decref(lo->v);
    lo->v = NULL;
    return 0;
}

/* The holder of the lazy object at t, or NULL. [-0, +0] */
static lazy_obj *lazy_of(lua_State *L, int t)
{
    lazy_obj *lo = NULL;
    if (lua_rawgetp(L, t, &held_key) == LUA_TUSERDATA) {
        lo = lua_touserdata(L, -1); /* stays referenced by the table */
    }
    lua_pop(L, 1);
    return lo;
}

static const char *iter_key(void *it, size_t *len)
{
#if JANSSON_VERSION_HEX >= 0x020e00
    *len = json_object_iter_key_len(it);
#else
    *len = strlen(json_object_iter_key(it));
#endif
    return json_object_iter_key(it);
}

/*
 * Puts member i of the object (key, value) into table t unless the table
 * has the key already (a handler's rawset). Raises on memory or depth.
 */
static void lazy_put(lua_State *L, int t, void *it)
{
    size_t kl;
    const char *k = iter_key(it, &kl);
    lua_pushlstring(L, k, kl);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, t) != LUA_TNIL) {
        lua_pop(L, 2);
        return;
    }
    lua_pop(L, 1);
    push_value(L, json_object_iter_value(it), 1);
    lua_rawset(L, t);
}

/* Puts every member not yet put in lazy object t and marks it a plain object. Raises on memory. */
static void lazy_complete(lua_State *L, int t)
{
    lazy_obj *lo = lazy_of(L, t);
    if (!lo) {
        return;
    }
    if (lo->v) {
        int i = 0;
        for (void *it = json_object_iter(lo->v); it; it = json_object_iter_next(lo->v, it), i++) {
            if (!(lo->put & (UINT64_C(1) << i))) {
                lazy_put(L, t, it);
                lo->put |= UINT64_C(1) << i;
            }
        }
    }
    lua_pushnil(L);
    lua_rawsetp(L, t, &held_key);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &object_key);
    lua_setmetatable(L, t);
    json_decref(lo->v);
    lo->v = NULL;
}

/* __index(t, k): the member k, put in the table the first time. */
static int l_lazy_index(lua_State *L)
{
    lazy_obj *lo = lazy_of(L, 1);
    if (!lo || !lo->v || lua_type(L, 2) != LUA_TSTRING) {
        return 0;
    }
    size_t kl, il;
    const char *k = lua_tolstring(L, 2, &kl);
    int i = 0;
    for (void *it = json_object_iter(lo->v); it; it = json_object_iter_next(lo->v, it), i++) {
        const char *ik = iter_key(it, &il);
        if (il == kl && memcmp(ik, k, kl) == 0) {
            if (lo->put & (UINT64_C(1) << i)) {
                return 0; /* put before and removed since */
            }
            push_value(L, json_object_iter_value(it), 1);
            lua_pushvalue(L, 2);
            lua_pushvalue(L, -2);
            lua_rawset(L, 1);
            lo->put |= UINT64_C(1) << i;
            return 1;
        }
    }
    return 0;
}

/* __newindex(t, k, v): only for keys the table lacks, which may be members not yet read. */
static int l_lazy_newindex(lua_State *L)
{
    return mt_lua__fill_then_set(L, lazy_complete);
}

static int l_lazy_pairs(lua_State *L)
{
    return mt_lua__fill_then_pairs(L, lazy_complete);
}

/* Pushes the state's lazy object metatable, making it the first time. [-0, +1] */
static void push_lazy_mt(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_key) == LUA_TTABLE) {
        return;
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 5);
    lua_pushcfunction(L, l_lazy_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_lazy_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, l_lazy_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &lazy_key);
}

/* [-1, +1]: the json_t (an object) as a light userdata, the lazy object. */
static int l_json_push_lazy(lua_State *L)
{
    json_t *j = lua_touserdata(L, 1);
    lua_pop(L, 1);
    lua_createtable(L, 0, 4); /* the holder and what a handler usually reads */
    lazy_obj *lo = lua_newuserdatauv(L, sizeof *lo, 0);
    lo->v = NULL;
    lo->put = 0;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &holder_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_lazy_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &holder_key);
    }
    lua_setmetatable(L, -2);
    lo->v = json_incref(j); /* once the holder can let it go */
    lua_rawsetp(L, -2, &held_key);
    push_lazy_mt(L);
    lua_setmetatable(L, -2);
    return 1;
}

mt_err mt_lua_push_json_data(lua_State *L, const json_t *j, size_t text_len, char *err,
                             size_t errlen)
{
    size_t n = json_is_object(j) ? json_object_size(j) : 0;
    if (n == 0 || n > LAZY_MAX_MEMBERS || text_len < MT_LUA_JSON_LAZY_MIN_TEXT) {
        return mt_lua_push_json_msg(L, j, err, errlen);
    }
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "Lua stack exhausted");
        return MT_ENOMEM;
    }
    lua_pushcfunction(L, l_json_push_lazy);
    lua_pushlightuserdata(L, (void *) j);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        snprintf(err, errlen, "memory limit of %zu bytes exceeded", mt_lua__mem_limit(L));
        return MT_ENOMEM;
    }
    return MT_OK;
}

bool mt_lua_json_is_lazy(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) {
        return false;
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_key);
    bool lazy = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return lazy;
}

static int l_lazy_complete(lua_State *L)
{
    lazy_complete(L, 1);
    return 0;
}

mt_err mt_lua_json_complete(lua_State *L, int idx)
{
    if (!mt_lua_json_is_lazy(L, idx)) {
        return MT_OK;
    }
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 2)) {
        return MT_ENOMEM;
    }
    lua_pushcfunction(L, l_lazy_complete);
    lua_pushvalue(L, idx);
    int st = lua_pcall(L, 1, 0, 0);
    if (st != LUA_OK) {
        lua_pop(L, 1);
        return st == LUA_ERRMEM ? MT_ENOMEM : MT_EINVAL;
    }
    return MT_OK;
}

/*
 * If 'text' is exactly a JSON integer that fits 64 bits (-?(0|[1-9][0-9]*),
 * nothing around it) sets *v and returns true. A counter in a kv table is
 * the usual case, and reading it so costs far less than a jansson parse.
 */
static bool plain_integer(const char *text, size_t len, lua_Integer *v)
{
    char buf[24];
    size_t i = len > 0 && text[0] == '-';
    if (i == len || len >= sizeof buf || (text[i] == '0' && len - i > 1)) {
        return false; /* not an integer JSON allows, or longer than any int64 */
    }
    memcpy(buf, text, len);
    buf[len] = '\0';
    int64_t n;
    if (mt_parse_i64(buf, &n)) {
        return false;
    }
    *v = (lua_Integer) n;
    return true;
}

json_t *mt_lua_json_parse(const char *text, size_t len, mt_err *rc, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    *rc = MT_OK;
    if (!j) {
        if (json_error_code(&je) == json_error_out_of_memory) {
            snprintf(err, errlen, "out of memory");
            *rc = MT_ENOMEM;
        } else {
            snprintf(err, errlen, "line %d column %d: %s", je.line, je.column, je.text);
            *rc = MT_EINVAL;
        }
    }
    return j;
}

mt_err mt_lua_push_json_msg(lua_State *L, const json_t *j, char *err, size_t errlen)
{
    mt_err rc = mt_lua_push_json(L, j);
    if (rc == MT_EINVAL) {
        snprintf(err, errlen, "nesting deeper than %d levels", MT_LUA_JSON_MAX_DEPTH);
    } else if (rc == MT_ENOMEM) {
        snprintf(err, errlen, "memory limit of %zu bytes exceeded", mt_lua__mem_limit(L));
    }
    return rc;
}

mt_err mt_lua_push_json_text(lua_State *L, const char *text, size_t len, char *err, size_t errlen)
{
    if (errlen) {
        err[0] = 0;
    }
    lua_Integer iv;
    if (plain_integer(text, len, &iv)) {
        if (!lua_checkstack(L, 1)) {
            snprintf(err, errlen, "Lua stack exhausted");
            return MT_ENOMEM;
        }
        lua_pushinteger(L, iv);
        return MT_OK;
    }
    mt_err rc;
    json_t *j = mt_lua_json_parse(text, len, &rc, err, errlen);
    if (!j) {
        return rc;
    }
    rc = mt_lua_push_json_msg(L, j, err, errlen);
    json_decref(j);
    return rc;
}

/* ---- the moontide.json module ---- */

/* __gc of the scratch userdata json.encode keeps its jansson value in. [-1, +0] */
static int l_json_scratch_gc(lua_State *L)
{
    json_t **slot = luaL_checkudata(L, 1, "moontide.json.scratch");
    json_decref(*slot);
    *slot = NULL;
    return 0;
}

/*
 * json.encode(v): compact JSON, keys sorted. The jansson value lives in a
 * userdata while Lua memory is allocated, so a memory error cannot leak it.
 * [-1, +1]
 */
static int l_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    json_t **slot = lua_newuserdatauv(L, sizeof *slot, 0);
    *slot = NULL;
    luaL_setmetatable(L, "moontide.json.scratch");
    char err[320];
    size_t reals;
    if (mt_lua_to_json(L, 1, slot, &reals, err, sizeof err)) {
        return luaL_error(L, "moontide.json.encode: %s", err);
    }
    const size_t flags = JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | reals;
    size_t n = json_dumpb(*slot, NULL, 0, flags);
    if (n == 0) {
        return luaL_error(L, "moontide.json.encode: out of memory");
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, n);
    json_dumpb(*slot, p, n, flags);
    luaL_pushresultsize(&b, n);
    json_decref(*slot);
    *slot = NULL;
    return 1;
}

/* json.decode(s): the value, or nil and a message. [-1, +(1|2)] */
static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[320];
    if (mt_lua_push_json_text(L, s, len, err, sizeof err) == MT_OK) {
        return 1;
    }
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
}

/* Gives the table at 1 (or a new one) the marker at registry[key]. [-(0|1), +1] */
static int mark(lua_State *L, const void *key, const char *fname)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
        lazy_complete(L, 1); /* event.data not read in full yet */
    }
    if (lua_getmetatable(L, 1)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &object_key);
        if (!lua_rawequal(L, -3, -2) && !lua_rawequal(L, -3, -1)) {
            return luaL_error(L, "moontide.json.%s: the table already has a metatable", fname);
        }
        lua_settop(L, 1);
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, key);
    lua_setmetatable(L, 1);
    return 1;
}

/* json.array([t]) -> t. [-(0|1), +1] */
static int l_json_array(lua_State *L)
{
    return mark(L, &array_key, "array");
}

/* json.object([t]) -> t. [-(0|1), +1] */
static int l_json_object(lua_State *L)
{
    return mark(L, &object_key, "object");
}

/* tostring(json.null) == "null". [-1, +1] */
static int l_json_null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

int mt_lua__open_json(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"encode", l_json_encode},
        {"decode", l_json_decode},
        {"array", l_json_array},
        {"object", l_json_object},
        {NULL, NULL},
    };
    luaL_newmetatable(L, "moontide.json.array");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_key);
    luaL_newmetatable(L, "moontide.json.object");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &object_key);
    luaL_newmetatable(L, "moontide.json.scratch");
    lua_pushcfunction(L, l_json_scratch_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    /* All light userdata share one metatable; json.null is the only one handlers see. */
    mt_lua_push_null(L);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_json_null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "moontide.json.null");
    luaL_newlib(L, funcs);
    mt_lua_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}

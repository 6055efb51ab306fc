/*
 * mt_lua_handler.c - part of mt_lua: subscription handlers written in Lua.
 *
 * Implements mt_sub_runner on top of mt_lua: one sandboxed state per
 * handler, the `event` table handed to it, and the `ctx` bindings (emit,
 * kv, log, now, reject) that route every effect through mt_fx into the
 * invocation's savepoint. ctx is built once per state; its closures share
 * one userdata box that points at the current invocation's mt_fx and is
 * cleared after the call, so a ctx kept by a handler cannot act later.
 */
#include <jansson.h>
#include <lauxlib.h>
#include <libgen.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_datacache.h"
#include "mt_fx.h"
#include "mt_lua.h"
#include "mt_lua_event.h"
#include "mt_lua_handler.h"
#include "mt_sub.h"
#include "mt_util.h"
#include "mt_watch.h"

#define SCAN_MAX 10000

typedef struct fx_box {
    mt_fx *fx;                 /* the current invocation's effects; NULL between calls */
} fx_box;

typedef struct handler {
    mt_lua *lu;
    char *name;                /* owned: subscription name */
    char *dir;                 /* owned: the handler's directory (require path) */
    fx_box *box;               /* lives in the Lua state (userdata) */
    int ctx_ref;               /* registry ref of the ctx table */
    uint64_t limit_ms;         /* limits.time: the watchdog's (mt_watch.h) */
    bool cache_user;           /* counted in mt_datacache_use */
} handler;

/*
 * The parsed JSON data of 'ev' (a new reference): from this thread's data
 * cache, or parsed now and kept there. NULL with *rc and err set if it does
 * not parse.
 */
static json_t *event_data(const mt_event *ev, mt_err *rc, char *err, size_t errlen)
{
    const char *text = (const char *) ev->data;
    json_t *v = mt_datacache_get(ev->sequence, text, ev->data_len);
    if (v) {
        *rc = MT_OK;
        return v;
    }
    v = mt_lua_json_parse(text, ev->data_len, rc, err, errlen);
    if (v) {
        mt_datacache_put(ev->sequence, text, ev->data_len, v);
    }
    return v;
}

static mt_fx *current_fx(lua_State *L)
{
    fx_box *b = lua_touserdata(L, lua_upvalueindex(1));
    if (!b || !b->fx) {
        luaL_error(L, "ctx used outside its handler call");
    }
    return b->fx;
}

/*
 * Converts the value at idx to compact JSON text (caller frees), or raises;
 * *value gets the jansson value the text was made from (the caller's), or
 * NULL for an integer, written without one.
 */
static char *to_json_value(lua_State *L, int idx, const char *fn, const char *part,
                           json_t **value)
{
    *value = NULL;
    if (lua_isinteger(L, idx)) {
        /* The usual kv value, a counter: no jansson value, no printf. */
        lua_Integer n = lua_tointeger(L, idx);
        mt_buf text;
        mt_buf_init(&text);
        if (n < 0) {
            mt_buf_adds(&text, "-");
        }
        mt_buf_add_u64(&text, n < 0 ? 0 - (uint64_t) n : (uint64_t) n);
        mt_buf_cstr(&text);
        return text.data;
    }
    json_t *j;
    char err[256];
    size_t reals;
    if (mt_lua_to_json(L, idx, &j, &reals, err, sizeof err)) {
        luaL_error(L, "%s%s: %s", fn, part, err);
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS | reals);
    if (!text) {
        json_decref(j);
        luaL_error(L, "%s%s: cannot encode", fn, part);
    }
    *value = j;
    return text;
}

/* to_json_value without the value. */
static char *to_json_text(lua_State *L, int idx, const char *fn, const char *part)
{
    json_t *value;
    char *text = to_json_value(L, idx, fn, part, &value);
    json_decref(value);
    return text;
}

/*
 * Argument idx as a string for fn + part (its name in messages, put
 * together only for one: emits are many), or raises: not
 * a string (numbers are not taken for names), or with a NUL byte, which
 * the engine's C strings would cut the name at.
 */
static const char *name_arg(lua_State *L, int idx, const char *fn, const char *part)
{
    if (lua_isnone(L, idx)) {
        luaL_error(L, "%s%s is missing", fn, part);
    }
    if (lua_type(L, idx) != LUA_TSTRING) {
        luaL_error(L, "%s%s must be a string, not %s", fn, part, luaL_typename(L, idx));
    }
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (memchr(s, 0, len)) {
        luaL_error(L, "%s%s must not contain a NUL byte", fn, part);
    }
    return s;
}

/*
 * The shared body of ctx.emit and ctx.schedule: type at stack index 'i',
 * data at i + 1, opts at i + 2; 'at' is the embargo (0 = none). Pushes the
 * new event's sequence or raises.
 */
static int emit_at(lua_State *L, mt_fx *fx, int i, int64_t at, const char *fn)
{
    const char *type = name_arg(L, i, fn, ": the event type");
    const char *subject = NULL;
    if (!lua_isnoneornil(L, i + 2)) {
        if (!lua_istable(L, i + 2)) {
            return luaL_error(L, "%s: the options must be a table, not %s", fn,
                              luaL_typename(L, i + 2));
        }
        lua_pushnil(L);
        while (lua_next(L, i + 2)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "subject") != 0) {
                return luaL_error(L, "%s options: unknown option '%s' (there is: subject)", fn,
                                  luaL_tolstring(L, -1, NULL));
            }
        }
        lua_getfield(L, i + 2, "subject"); /* stays on the stack while 'subject' is used */
        if (!lua_isnil(L, -1)) {
            subject = name_arg(L, lua_gettop(L), fn, " options: subject");
        }
    }
    json_t *value = NULL;
    char *data = lua_isnoneornil(L, i + 1) ? NULL : to_json_value(L, i + 1, fn, " data", &value);
    uint64_t seq;
    char err[512];
    mt_err rc = mt_fx_emit_value(fx, type, data, data ? strlen(data) : 0, value, subject, at,
                                 &seq, err, sizeof err);
    free(data);
    if (rc) {
        return luaL_error(L, "%s", err);
    }
    lua_pushinteger(L, (lua_Integer) seq);
    return 1;
}

/* ctx.emit(type, data, opts) -> sequence.  [-3, +1] */
static int l_ctx_emit(lua_State *L)
{
    return emit_at(L, current_fx(L), 1, 0, "ctx.emit");
}

#define SCHEDULE_MAX_US INT64_C(253402300799999999) /* 9999-12-31T23:59:59.999999Z */

/* The event's time + ms, or raises if that is past the last time an event can carry. */
static int64_t schedule_after(lua_State *L, mt_fx *fx, uint64_t ms)
{
    int64_t now = mt_fx_now_us(fx);
    if (now > SCHEDULE_MAX_US || ms > (uint64_t) (SCHEDULE_MAX_US - now) / 1000) {
        char n[24];
        snprintf(n, sizeof n, "%llu", (unsigned long long) ms);
        luaL_error(L, "ctx.schedule: %s ms after the event's time is past the year 9999", n);
    }
    return now + (int64_t) ms * 1000;
}

/*
 * ctx.schedule(when, type, data, opts) -> sequence: like emit, embargoed
 * until 'when': a delay in milliseconds (a number) or a duration string
 * ("30s") counted from the event's time, so a re-run schedules the same
 * instant; or an RFC 3339 time.  [-4, +1]
 */
static int l_ctx_schedule(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    int64_t at = 0;
    if (lua_type(L, 1) == LUA_TNUMBER) {
        lua_Integer ms = luaL_checkinteger(L, 1);
        luaL_argcheck(L, ms >= 0, 1, "a delay must not be negative");
        at = schedule_after(L, fx, (uint64_t) ms);
    } else {
        const char *w = luaL_checkstring(L, 1);
        uint64_t ms;
        if (mt_parse_duration(w, &ms) == MT_OK) {
            at = schedule_after(L, fx, ms);
        } else if (mt_time_parse(w, &at) != MT_OK) {
            return luaL_error(L, "ctx.schedule: '%s' is neither a duration nor an RFC 3339 time",
                              w);
        }
    }
    /* A time already past (before 1970 too) delivers at once, and is kept as
     * given; only the first microsecond of 1970 moves by one (0 means "none"). */
    return emit_at(L, fx, 2, at != 0 ? at : 1, "ctx.schedule");
}

/* ctx.reply(data) -> sequence: answers the event's requester.  [-1, +1] */
static int l_ctx_reply(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    char *data = lua_isnoneornil(L, 1) ? NULL : to_json_text(L, 1, "ctx.reply", " data");
    uint64_t seq;
    char err[512];
    mt_err rc = mt_fx_reply(fx, data, data ? strlen(data) : 0, &seq, err, sizeof err);
    free(data);
    if (rc) {
        return luaL_error(L, "%s", err);
    }
    lua_pushinteger(L, (lua_Integer) seq);
    return 1;
}

#define KV_TYPE "moontide.kv" /* the kv objects' type name (their metatable's __name) */

/*
 * The table name of the kv object that a method was called on (argument 1).
 * The methods hold the kv objects' metatable as upvalue 2: comparing with it
 * is cheaper than luaL_testudata's registry lookup, on every get and put.
 */
static const char *kv_table_name(lua_State *L)
{
    bool ok = lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1);
    if (ok) {
        ok = lua_rawequal(L, -1, lua_upvalueindex(2));
        lua_pop(L, 1);
    }
    if (!ok) {
        luaL_error(L, "kv: call methods with ':' (t:get(key))");
    }
    lua_getiuservalue(L, 1, 1);
    const char *name = lua_tostring(L, -1);
    lua_pop(L, 1); /* the string stays referenced by the object */
    return name;
}

/*
 * Argument idx as a kv key (what: "get", "put", "del"), or raises naming
 * what is wrong with it: empty, a NUL byte (keys are C strings in the
 * engine), or longer than MT_FX_MAX_KEY.
 */
static const char *kv_key(lua_State *L, int idx, const char *what)
{
    size_t len;
    const char *key = luaL_checklstring(L, idx, &len);
    if (len == 0) {
        luaL_error(L, "kv %s: the key is empty", what);
    } else if (memchr(key, 0, len)) {
        luaL_error(L, "kv %s: the key contains a NUL byte", what);
    } else if (len > MT_FX_MAX_KEY) {
        luaL_error(L, "kv %s: the key is %d bytes, more than %d", what, (int) len,
                   MT_FX_MAX_KEY);
    }
    return key;
}

/* 'key' cut for a message: at most 64 bytes, not inside a UTF-8 character. */
static const char *key_shown(const char *key, char *out, size_t outlen)
{
    size_t len = strlen(key), keep = mt_diag_cut_at(key, len, 64);
    snprintf(out, outlen, "%.*s%s", (int) keep, key, keep < len ? "..." : "");
    return out;
}

/* Raises what a kv write's error 'rc' means (the key was checked by kv_key). */
static int kv_error(lua_State *L, const char *what, const char *key, mt_err rc)
{
    char k[80];
    key_shown(key, k, sizeof k);
    if (rc == MT_ETOOBIG) {
        return luaL_error(L, "kv %s '%s': the writes of one run would take more than %d MiB",
                          what, k, (int) (MT_FX_MAX_WRITTEN >> 20));
    }
    return luaL_error(L, "kv %s '%s': %s", what, k,
                      rc == MT_EINVAL ? "the value is more than 1 MiB of JSON" : mt_err_str(rc));
}

/* t:get(key) -> value or nil.  [-2, +1] */
static int l_kv_get(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    const char *table = kv_table_name(L);
    const char *key = kv_key(L, 2, "get");
    const char *json;
    size_t len;
    mt_err rc = mt_fx_kv_get(fx, table, key, &json, &len);
    if (rc == MT_ENOTFOUND) {
        lua_pushnil(L);
        return 1;
    }
    char k[80], err[256];
    if (rc) {
        return luaL_error(L, "kv get '%s': %s", key_shown(key, k, sizeof k), mt_err_str(rc));
    }
    if (mt_lua_push_json_text(L, json, len, err, sizeof err)) {
        return luaL_error(L, "kv get '%s': %s", key_shown(key, k, sizeof k), err);
    }
    return 1;
}

/* t:put(key, value).  [-3, +0] */
static int l_kv_put(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    const char *table = kv_table_name(L);
    const char *key = kv_key(L, 2, "put");
    luaL_checkany(L, 3);
    char *text = to_json_text(L, 3, "kv put", "");
    mt_err rc = mt_fx_kv_put(fx, table, key, text, strlen(text));
    free(text);
    if (rc) {
        return kv_error(L, "put", key, rc);
    }
    return 0;
}

/* t:del(key).  [-2, +0] */
static int l_kv_del(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    const char *table = kv_table_name(L);
    const char *key = kv_key(L, 2, "del");
    mt_err rc = mt_fx_kv_del(fx, table, key);
    if (rc) {
        return kv_error(L, "del", key, rc);
    }
    return 0;
}

typedef struct scan_state {
    lua_State *L;
    lua_Integer n;
    char err[256];
} scan_state;

static int scan_visit(const char *key, size_t klen, const char *json, size_t len, void *arg)
{
    scan_state *st = arg;
    lua_State *L = st->L;
    if (!lua_checkstack(L, 4)) {
        snprintf(st->err, sizeof st->err, "stack overflow");
        return 1;
    }
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, key, klen);
    lua_setfield(L, -2, "key");
    if (mt_lua_push_json_text(L, json, len, st->err, sizeof st->err)) {
        lua_pop(L, 1);
        return 1;
    }
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, ++st->n);
    return 0;
}

/* t:scan(prefix) -> array of {key=, value=} in key order.  [-2, +1] */
static int l_kv_scan(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    const char *table = kv_table_name(L);
    size_t plen = 0;
    const char *prefix = luaL_optlstring(L, 2, "", &plen);
    if (memchr(prefix, 0, plen)) {
        return luaL_error(L, "kv scan: the prefix contains a NUL byte");
    }
    lua_newtable(L);
    scan_state st = {L, 0, ""};
    mt_err rc = mt_fx_kv_scan(fx, table, prefix, SCAN_MAX, scan_visit, &st);
    if (rc || st.err[0]) {
        return luaL_error(L, "kv scan: %s", st.err[0] ? st.err : mt_err_str(rc));
    }
    return 1;
}

/* ctx.kv(name) -> table store.  [-1, +1] */
static int l_ctx_kv(lua_State *L)
{
    current_fx(L);
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (len == 0 || len > MT_FX_MAX_TABLE || memchr(name, 0, len)) {
        return luaL_error(L, "ctx.kv: a table name must be 1 to %d bytes without NUL",
                          MT_FX_MAX_TABLE);
    }
    /* One object per name while it is in use (the cache's values are weak):
     * a handler calls ctx.kv on every event. The object is a userdata, so
     * that what one call gets, no later one can find changed. */
    lua_settop(L, 1);
    lua_pushvalue(L, 1);
    if (lua_rawget(L, lua_upvalueindex(2)) == LUA_TUSERDATA) {
        return 1;
    }
    lua_pop(L, 1);
    lua_newuserdatauv(L, 0, 1);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, lua_upvalueindex(3)); /* the kv objects' metatable */
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, lua_upvalueindex(2));
    return 1;
}

static void log_at(lua_State *L, mt_diag_level level)
{
    mt_fx *fx = current_fx(L);
    int n = lua_gettop(L); /* before luaL_buffinit, which may push a placeholder */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
        if (i < n) {
            luaL_addchar(&b, ' ');
        }
    }
    luaL_pushresult(&b);
    mt_fx_log(fx, level, lua_tostring(L, -1));
}

static int l_log_debug(lua_State *L) { log_at(L, MT_DIAG_DEBUG); return 0; }
static int l_log_info(lua_State *L) { log_at(L, MT_DIAG_INFO); return 0; }
static int l_log_warn(lua_State *L) { log_at(L, MT_DIAG_WARN); return 0; }
static int l_log_error(lua_State *L) { log_at(L, MT_DIAG_ERROR); return 0; }

/* ctx.now() -> milliseconds since the epoch of the event's time.  [-0, +1] */
static int l_ctx_now(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    int64_t us = mt_fx_now_us(fx);
    /* Rounded down, before 1970 too, as the schedule counts from it. */
    lua_pushinteger(L, (lua_Integer) (us / 1000 - (us % 1000 < 0)));
    return 1;
}

/* ctx.reject(reason): dead-letter now, no retries; stops the handler.  [-1, +0] */
static int l_ctx_reject(lua_State *L)
{
    mt_fx *fx = current_fx(L);
    mt_fx_reject(fx, luaL_optstring(L, 1, "no reason given"));
    return luaL_error(L, "rejected: %s", fx->reject);
}

/* Builds ctx with closures over 'box'; leaves it on the stack.  [-0, +1] */
static int build_ctx(lua_State *L)
{
    handler *h = lua_touserdata(L, 1);
    lua_settop(L, 0);
    h->box = lua_newuserdatauv(L, sizeof *h->box, 0);
    h->box->fx = NULL;
    lua_pushvalue(L, 1);
    /* The registry keeps the box alive as long as the state. */
    luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L); /* ctx */
    int ctx = lua_gettop(L);

    luaL_newmetatable(L, KV_TYPE); /* the kv objects' metatable */
    int kv_mt = lua_gettop(L);
    lua_newtable(L); /* __index */
    static const luaL_Reg kv_methods[] = {
        {"get", l_kv_get}, {"put", l_kv_put}, {"del", l_kv_del}, {"scan", l_kv_scan}, {NULL, NULL},
    };
    for (const luaL_Reg *r = kv_methods; r->name; r++) {
        lua_pushvalue(L, 1);
        lua_pushvalue(L, kv_mt);
        lua_pushcclosure(L, r->func, 2);
        lua_setfield(L, -2, r->name);
    }
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "kv table");
    lua_setfield(L, -2, "__metatable"); /* getmetatable(t) gives this; setmetatable refuses */

    lua_pushvalue(L, 1);
    lua_newtable(L); /* name -> kv object, weak values */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, kv_mt);
    lua_pushcclosure(L, l_ctx_kv, 3);
    lua_remove(L, kv_mt);
    lua_setfield(L, ctx, "kv");

    static const luaL_Reg fns[] = {
        {"emit", l_ctx_emit}, {"schedule", l_ctx_schedule}, {"reply", l_ctx_reply},
        {"now", l_ctx_now},
        {"reject", l_ctx_reject}, {NULL, NULL},
    };
    for (const luaL_Reg *r = fns; r->name; r++) {
        lua_pushvalue(L, 1);
        lua_pushcclosure(L, r->func, 1);
        lua_setfield(L, ctx, r->name);
    }
    lua_newtable(L);
    static const luaL_Reg logs[] = {
        {"debug", l_log_debug}, {"info", l_log_info}, {"warn", l_log_warn},
        {"error", l_log_error}, {NULL, NULL},
    };
    for (const luaL_Reg *r = logs; r->name; r++) {
        lua_pushvalue(L, 1);
        lua_pushcclosure(L, r->func, 1);
        lua_setfield(L, -2, r->name);
    }
    lua_setfield(L, ctx, "log");
    lua_pushstring(L, h->name);
    lua_setfield(L, ctx, "subscription");
    lua_pushvalue(L, ctx);
    h->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* ---- the runner ---- */

/* print(): inside a run it is one of the run's log lines (mt_fx_log, with its limits). */
static void handler_log(void *arg, mt_diag_level level, const char *msg)
{
    handler *h = arg;
    if (h->box && h->box->fx) {
        mt_fx_log(h->box->fx, level, msg);
        return;
    }
    const char *fields[] = {"subscription", h->name, NULL};
    mt_diag_emit(level, fields, "%s", msg);
}

static void handler_close(void *p)
{
    handler *h = p;
    if (!h) {
        return;
    }
    if (h->cache_user) {
        mt_datacache_use(-1);
    }
    mt_lua_free(h->lu);
    free(h->name);
    free(h->dir);
    free(h);
}

static mt_err handler_open(const mt_sub_conf *conf, void **out, char *err, size_t errlen)
{
    *out = NULL;
    handler *h = mt_xcalloc(1, sizeof *h);
    h->name = mt_xstrdup(conf->name);
    h->limit_ms = conf->max_time_ms;
    char *tmp = mt_xstrdup(conf->handler);
    h->dir = mt_xstrdup(dirname(tmp));
    free(tmp);
    const char *paths[] = {"lua", h->dir};
    mt_lua_opts o = {
        .mem_limit = (size_t) conf->max_memory,
        .budget = conf->max_instructions,
        .paths = paths,
        .npaths = 2,
        .log = handler_log,
        .log_arg = h,
    };
    mt_err rc = mt_lua_new(&o, &h->lu);
    if (rc) {
        snprintf(err, errlen, "cannot create a Lua state: %s", mt_err_str(rc));
        handler_close(h);
        return MT_ELUA;
    }
    mt_buf why;
    mt_buf_init(&why);
    if (mt_watch_take_load(conf->name, &why)) {
        snprintf(err, errlen, "%s", mt_buf_cstr(&why));
        mt_buf_free(&why);
        handler_close(h);
        return MT_ELUA;
    }
    mt_buf_free(&why);
    mt_watch_enter_load(h->name, conf->handler, h->limit_ms);
    rc = mt_lua_load_source(h->lu, conf->handler, conf->handler_src, conf->handler_src_len, err,
                            errlen);
    mt_watch_leave();
    if (rc) {
        handler_close(h);
        return rc;
    }
    lua_State *L = mt_lua_state(h->lu);
    lua_pushcfunction(L, build_ctx);
    lua_pushlightuserdata(L, h);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot build ctx: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        handler_close(h);
        return MT_ELUA;
    }
    mt_datacache_use(1);
    h->cache_user = true;
    *out = h;
    return MT_OK;
}

typedef struct event_args {
    const mt_event *ev;
    uint32_t attempt;
    mt_buf *error;
    bool ok;
    bool malformed; /* the data can never be given to a handler */
} event_args;

/*
 * Builds the event table (mt_lua_event.h: attributes read when first used,
 * data converted now); runs under lua_pcall (it allocates in the state,
 * which may hit the memory limit).  [-1, +1]
 */
static int build_event(lua_State *L)
{
    event_args *a = lua_touserdata(L, 1);
    const mt_event *ev = a->ev;
    mt_lua_event_push(L, ev, a->attempt);
    if (ev->data_kind == MT_DATA_JSON) {
        char err[256];
        mt_err rc;
        json_t *data = event_data(ev, &rc, err, sizeof err);
        if (data) {
            rc = mt_lua_push_json_data(L, data, ev->data_len, err, sizeof err);
            json_decref(data);
        }
        if (rc) {
            mt_buf_addf(a->error, "malformed payload: %s", err);
            a->malformed = rc == MT_EINVAL; /* nesting; not memory, which may pass later */
            return 0;
        }
    } else if (ev->data_kind != MT_DATA_NONE) {
        lua_pushlstring(L, (const char *) ev->data, ev->data_len);
    } else {
        lua_pushnil(L);
    }
    /* Raw: a plain set of a missing key would complete the table (__newindex). */
    lua_pushliteral(L, "data");
    lua_insert(L, -2);
    lua_rawset(L, -3);
    a->ok = true;
    return 1;
}

/*
 * Pushes the event table. Otherwise pushes nothing and writes why: MT_EINVAL
 * for data that can never be given to a handler (JSON nested deeper than
 * Lua values may be), MT_ELUA if the table could not be built (memory).
 */
static mt_err push_event(lua_State *L, const mt_event *ev, uint32_t attempt, mt_buf *error)
{
    event_args a = {ev, attempt, error, false, false};
    lua_pushcfunction(L, build_event);
    lua_pushlightuserdata(L, &a);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        mt_buf_addf(error, "cannot build the event: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return MT_ELUA;
    }
    if (!a.ok) {
        lua_pop(L, 1);
        return a.malformed ? MT_EINVAL : MT_ELUA;
    }
    return MT_OK;
}

static mt_err handler_invoke(void *p, const mt_event *ev, uint32_t attempt, mt_fx *fx,
                             mt_buf *error, mt_buf *traceback)
{
    handler *h = p;
    lua_State *L = mt_lua_state(h->lu);
    if (!lua_checkstack(L, 8)) {
        mt_buf_adds(error, "Lua stack exhausted");
        return MT_ELUA;
    }
    int top = lua_gettop(L);
    if (mt_lua_push_handler(h->lu)) {
        mt_buf_adds(error, "no handler loaded");
        return MT_ELUA;
    }
    mt_err prc = push_event(L, ev, attempt, error);
    if (prc) {
        lua_settop(L, top);
        return prc;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ctx_ref);
    h->box->fx = fx;
    mt_watch_enter(h->name, ev, attempt, h->limit_ms);
    mt_err rc = mt_lua_call(h->lu, 2, 0, error, traceback);
    mt_watch_leave();
    h->box->fx = NULL;
    lua_settop(L, top);
    return rc;
}

static const mt_sub_runner lua_runner = {
    .open = handler_open,
    .invoke = handler_invoke,
    .close = handler_close,
    .trial_load = true,
};

const mt_sub_runner *mt_lua_sub_runner(void)
{
    return &lua_runner;
}

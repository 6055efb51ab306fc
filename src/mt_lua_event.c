/*
 * mt_lua_event.c - the `event` table a handler gets, with its attributes
 * read when first used (mt_lua_event.h says what the handler sees).
 *
 * The table holds the subject and, under a light-userdata key of this
 * file, a userdata with a copy of the event's string attributes and its
 * numbers (a 96-byte header and the strings, so most fit the state's
 * small-block allocator); its metatable
 * (one per state, in the registry) has:
 *   __index     puts the attribute asked for in the table and returns it;
 *               the first name that is not a CloudEvents or engine
 *               attribute puts the extensions in;
 *   __newindex  completes the table (every attribute in), then sets;
 *   __pairs     completes the table, then iterates it;
 *   __metatable false, so a handler cannot take the shared metatable apart.
 * Completing removes the copy and the metatable: a plain table is left.
 */
#include "mt_lua_event.h"
#include <lauxlib.h>
#include <string.h>
#include "mt_lua.h"
#include "mt_lua_int.h"
#include "mt_util.h"

/* The fields an event table can hold besides data and the extensions. */
enum {
    F_SPECVERSION,
    F_ATTR, /* F_ATTR + a: the string attribute a, up to the extensions */
    F_SEQUENCE = F_ATTR + MT_ATTR_EXTENSIONS,
    F_STREAMVERSION,
    F_PRIORITY,
    F_RECORDEDTIME,
    F_ATTEMPT,
    F_COUNT
};

/* Small enough for the state's small-block allocator with most events. */
typedef struct lazy_event {
    uint64_t sequence;
    uint64_t streamversion;
    int64_t recordedtime_us;
    uint32_t attempt;
    uint32_t put;                /* bit per field: in the table (the handler may have removed it since) */
    int8_t priority;             /* -1 when absent */
    bool ext_put;                /* the extensions are in the table */
    uint32_t at[MT_ATTR_COUNT];  /* string attribute a is text + at[a] - 1; 0 when absent */
    char text[];
} lazy_event;

static const char *attr_of(const lazy_event *le, int a)
{
    return le->at[a] ? le->text + le->at[a] - 1 : NULL;
}

static const char copy_key;  /* in an event table: its lazy_event */
static const char mt_key;    /* in the registry: the event metatable */
static const char names_key; /* in the registry: field name -> F_* */

static const char *field_name(int f)
{
    if (f >= F_ATTR && f < F_SEQUENCE) {
        return mt_event_attr_name((mt_event_attr) (f - F_ATTR));
    }
    switch (f) {
    case F_SPECVERSION: return "specversion";
    case F_SEQUENCE: return "sequence";
    case F_STREAMVERSION: return "streamversion";
    case F_PRIORITY: return "priority";
    case F_RECORDEDTIME: return "recordedtime";
    default: return "attempt";
    }
}

/* Pushes field f's value; false (nothing pushed) if the event has none. Raises on memory. */
static bool push_field(lua_State *L, const lazy_event *le, int f)
{
    if (f >= F_ATTR && f < F_SEQUENCE) {
        const char *s = attr_of(le, f - F_ATTR);
        if (s) {
            lua_pushstring(L, s);
        }
        return s != NULL;
    }
    switch (f) {
    case F_SPECVERSION: lua_pushliteral(L, "1.0"); return true;
    case F_SEQUENCE: lua_pushinteger(L, (lua_Integer) le->sequence); return true;
    case F_STREAMVERSION:
        if (le->at[MT_ATTR_SUBJECT]) {
            lua_pushinteger(L, (lua_Integer) le->streamversion);
        }
        return le->at[MT_ATTR_SUBJECT] != 0;
    case F_PRIORITY:
        if (le->priority >= 0) {
            lua_pushinteger(L, le->priority);
        }
        return le->priority >= 0;
    case F_RECORDEDTIME: {
        char ts[40];
        mt_time_format_us(le->recordedtime_us, ts, sizeof ts);
        lua_pushstring(L, ts);
        return true;
    }
    default: lua_pushinteger(L, le->attempt); return true;
    }
}

/* The event table's copy, or NULL once it is complete. */
static lazy_event *copy_of(lua_State *L, int t)
{
    lua_rawgetp(L, t, &copy_key);
    lazy_event *le = lua_touserdata(L, -1);
    lua_pop(L, 1); /* the table still holds it */
    return le;
}

/* Sets t[key at -2] = value at -1 unless t already has the key; pops both. */
static void put_absent(lua_State *L, int t)
{
    lua_pushvalue(L, -2);
    bool had = lua_rawget(L, t) != LUA_TNIL;
    lua_pop(L, 1);
    if (had) {
        lua_pop(L, 2);
    } else {
        lua_rawset(L, t);
    }
}

/*
 * Puts the extensions in table t, except names the table has (the handler
 * set them) and names of other fields. Extensions were validated as a JSON
 * object of scalars when the event was published.
 */
static void put_extensions(lua_State *L, int t, lazy_event *le)
{
    const char *x = attr_of(le, MT_ATTR_EXTENSIONS);
    if (le->ext_put || !x) {
        le->ext_put = true;
        return;
    }
    char err[128];
    if (mt_lua_push_json_text(L, x, strlen(x), err, sizeof err) != MT_OK) {
        luaL_error(L, "cannot read the event's extensions: %s", err);
    }
    int xt = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key);
    int names = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, xt)) {
        lua_pushvalue(L, -2);
        bool field = lua_rawget(L, names) != LUA_TNIL;
        lua_pop(L, 1);
        if (field) {
            lua_pop(L, 1);
            continue;
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        put_absent(L, t);
    }
    lua_settop(L, xt - 1);
    le->ext_put = true;
}

/* Puts every attribute still missing in event table t and makes it plain. Raises on memory. */
static void complete(lua_State *L, int t)
{
    lazy_event *le = copy_of(L, t);
    if (!le) {
        return;
    }
    for (int f = 0; f < F_COUNT; f++) {
        if (!(le->put & (1u << f))) {
            lua_pushstring(L, field_name(f));
            if (push_field(L, le, f)) {
                put_absent(L, t);
            } else {
                lua_pop(L, 1);
            }
            le->put |= 1u << f;
        }
    }
    put_extensions(L, t, le);
    lua_pushnil(L);
    lua_rawsetp(L, t, &copy_key); /* le may be collected from here on */
    lua_pushnil(L);
    lua_setmetatable(L, t);
}

/* __index(t, k); upvalue 1: the names table. */
static int l_index(lua_State *L)
{
    lazy_event *le = copy_of(L, 1);
    if (!le || lua_type(L, 2) != LUA_TSTRING) {
        return 0;
    }
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TNUMBER) {
        int f = (int) lua_tointeger(L, -1);
        if (le->put & (1u << f) || !push_field(L, le, f)) {
            return 0; /* put before and removed since, or absent */
        }
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, 1);
        le->put |= 1u << f;
        return 1;
    }
    if (le->ext_put) {
        return 0;
    }
    put_extensions(L, 1, le);
    lua_pushvalue(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* __newindex(t, k, v): only for keys the table lacks, which may be unread attributes. */
static int l_newindex(lua_State *L)
{
    return mt_lua__fill_then_set(L, complete);
}

static int l_pairs(lua_State *L)
{
    return mt_lua__fill_then_pairs(L, complete);
}

static int l_complete(lua_State *L)
{
    complete(L, 1);
    return 0;
}

/* Pushes the state's event metatable, making it the first time. */
static void push_metatable(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &mt_key) == LUA_TTABLE) {
        return;
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, F_COUNT);
    for (int f = 0; f < F_COUNT; f++) {
        lua_pushinteger(L, f);
        lua_setfield(L, -2, field_name(f));
    }
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &names_key);
    lua_createtable(L, 0, 4);
    lua_insert(L, -2);
    lua_pushcclosure(L, l_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, l_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &mt_key);
}

void mt_lua_event_push(lua_State *L, const mt_event *ev, uint32_t attempt)
{
    size_t len[MT_ATTR_COUNT], total = 0;
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        len[i] = ev->attr[i] ? strlen(ev->attr[i]) + 1 : 0;
        total += len[i];
    }
    lua_createtable(L, 0, 4); /* data, the copy, and what a handler usually reads */
    lazy_event *le = lua_newuserdatauv(L, sizeof *le + total, 0);
    le->sequence = ev->sequence;
    le->streamversion = ev->streamversion;
    le->recordedtime_us = ev->recordedtime_us;
    le->attempt = attempt;
    le->put = 0;
    le->priority = (int8_t) ev->priority;
    le->ext_put = false;
    size_t off = 0;
    for (int i = 0; i < MT_ATTR_COUNT; i++) {
        le->at[i] = len[i] ? (uint32_t) (off + 1) : 0;
        memcpy(le->text + off, ev->attr[i] ? ev->attr[i] : "", len[i]);
        off += len[i];
    }
    lua_rawsetp(L, -2, &copy_key);
    /* Nearly every handler reads the subject: put at once it costs about
     * 800 instructions, through __index about 1,500. */
    if (ev->attr[MT_ATTR_SUBJECT]) {
        lua_pushliteral(L, "subject");
        lua_pushlstring(L, ev->attr[MT_ATTR_SUBJECT], len[MT_ATTR_SUBJECT] - 1);
        lua_rawset(L, -3);
        le->put |= 1u << (F_ATTR + MT_ATTR_SUBJECT);
    }
    push_metatable(L);
    lua_setmetatable(L, -2);
}

bool mt_lua_event_complete(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) {
        return true;
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &mt_key);
    bool event = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!event) {
        return true;
    }
    if (!lua_checkstack(L, 2)) {
        return false;
    }
    lua_pushcfunction(L, l_complete);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return false;
    }
    return true;
}

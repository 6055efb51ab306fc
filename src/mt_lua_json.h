/*
 * mt_lua_json.h - the bridge between JSON values (jansson) and Lua values,
 * for any state made by mt_lua_new, and behind the built-in moontide.json
 * module. The value mapping (integers, reals, null, marked arrays and
 * objects, the nesting limit) is described in mt_lua.h. Functions run on
 * the thread that owns the state and keep no state of their own.
 */
#ifndef MT_LUA_JSON_H
#define MT_LUA_JSON_H
#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include "mt_err.h"

#define MT_LUA_JSON_MAX_DEPTH 128              /* nesting of arrays and objects */

/* Pushes json.null. Never raises if the stack has room for one value. */
void mt_lua_push_null(lua_State *L);

/* True if the value at 'idx' is json.null. */
bool mt_lua_is_null(lua_State *L, int idx);

/*
 * Pushes 'j' (borrowed) as a Lua value; arrays and objects get their marker
 * metatables. Runs protected: never raises, pushes nothing on error.
 * MT_EINVAL if nesting exceeds MT_LUA_JSON_MAX_DEPTH; MT_ENOMEM if the
 * state's memory limit is reached or the stack cannot grow.
 */
mt_err mt_lua_push_json(lua_State *L, const json_t *j);

/*
 * Parses 'len' bytes of JSON text (any value at top level; "\u0000" allowed
 * in strings) and pushes it like mt_lua_push_json. On failure pushes
 * nothing and writes a message into err: MT_EINVAL ("line 1 column 5:
 * ..." or the nesting limit), MT_ENOMEM ("memory limit of N bytes exceeded").
 */
mt_err mt_lua_push_json_text(lua_State *L, const char *text, size_t len, char *err, size_t errlen);

/*
 * The two halves of mt_lua_push_json_text, for a caller that keeps the
 * parsed value: parse 'len' bytes (returns a new reference, or NULL with
 * *rc and err set as above), then push it (mt_lua_push_json, with err set
 * as above on failure).
 */
json_t *mt_lua_json_parse(const char *text, size_t len, mt_err *rc, char *err, size_t errlen);
mt_err mt_lua_push_json_msg(lua_State *L, const json_t *j, char *err, size_t errlen);

#define MT_LUA_JSON_LAZY_MIN_TEXT 256 /* bytes of JSON text below which data is converted at once */

/*
 * Pushes an event's data 'j' (of 'text_len' bytes of JSON text) like
 * mt_lua_push_json_msg, except that an object of 1 to 64 members and at
 * least MT_LUA_JSON_LAZY_MIN_TEXT bytes becomes a table whose members
 * enter it the first time they are read (`__index`), as the event table's
 * attributes do (mt_lua_event.h); smaller data costs less converted at
 * once. The table holds a reference to 'j' meanwhile. pairs(), the JSON
 * encoder, json.object/json.array, an assignment to a key the table lacks
 * setmetatable() and the sandbox's next() first put every member in, after
 * which it is a plain object (the object marker as its metatable). A member
 * read for the first time is converted then, and a nesting or memory error
 * raises there. Only rawget() on a table not yet complete sees less, and
 * getmetatable() gives false. Runs protected.
 */
mt_err mt_lua_push_json_data(lua_State *L, const json_t *j, size_t text_len, char *err,
                             size_t errlen);

/* True if the value at 'idx' is such a table, not yet complete. Never raises. */
bool mt_lua_json_is_lazy(lua_State *L, int idx);

/*
 * If the value at 'idx' is such a table, puts every member in and makes it
 * a plain object. Never raises: MT_ENOMEM when the state is out of memory,
 * MT_EINVAL when a member nests deeper than MT_LUA_JSON_MAX_DEPTH. Any
 * other value is left alone (MT_OK).
 */
mt_err mt_lua_json_complete(lua_State *L, int idx);

/*
 * Converts the value at 'idx' to JSON. Sets *out (caller decrefs; NULL on
 * error). nil is null. Object members are inserted in byte order of their
 * keys, so any dump is deterministic. Uses raw access (no metamethods) and
 * never raises; the stack is left as it was. MT_EINVAL with a message naming
 * the place ("$.items[2]: cannot encode a function value") for functions,
 * userdata, NaN or infinity, invalid UTF-8, cycles, nesting over
 * MT_LUA_JSON_MAX_DEPTH, and tables mixing or skipping keys ("$.a: sparse
 * array: key 5 in a table of 2 keys"); MT_ENOMEM if jansson runs out.
 * With 'real_flag', sets it to the JSON_REAL_PRECISION flag to dump *out
 * with: the fewest digits, 15 to 17, that give every real back exactly, so
 * 0.1 is written "0.1" and not "0.10000000000000001" (jansson's default of
 * 17); 0 if there is no real.
 */
mt_err mt_lua_to_json(lua_State *L, int idx, json_t **out, size_t *real_flag, char *err,
                      size_t errlen);

#endif

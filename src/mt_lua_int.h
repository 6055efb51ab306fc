/*
 * mt_lua_int.h - internals shared by mt_lua.c (state, sandbox, loading,
 * calls), mt_lua_json.c (the JSON bridge and the moontide.json module) and
 * mt_lua_event.c (the event table).
 * Not for other modules.
 */
#ifndef MT_LUA_INT_H
#define MT_LUA_INT_H
#include <stddef.h>
#include "mt_lua.h"

/*
 * Creates the JSON metatables and the null sentinel in the registry and
 * pushes the moontide.json module table. [-0, +1]; raises on memory
 * (called only while the state is set up, in protected mode).
 */
int mt_lua__open_json(lua_State *L);

/* The state's memory limit in bytes (for messages). */
size_t mt_lua__mem_limit(lua_State *L);

/*
 * __newindex(t, k, v) and __pairs(t) of the tables filled when first read
 * (the event's, its data's): 'fill' puts in t (at the given index)
 * everything not yet there and makes it plain (raising on memory); then the
 * key is set, or t is iterated, without metamethods.
 */
int mt_lua__fill_then_set(lua_State *L, void (*fill)(lua_State *L, int t));
int mt_lua__fill_then_pairs(lua_State *L, void (*fill)(lua_State *L, int t));

#endif

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
 * next(t, k) without metamethods: what the __pairs of the tables filled
 * when first read (the event's, its data's) returns once they are full.
 */
int mt_lua__next(lua_State *L);

#endif

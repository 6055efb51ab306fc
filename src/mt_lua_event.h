/*
 * mt_lua_event.h - the `event` table a handler gets, with its attributes
 * read when first used.
 *
 * A handler run used to start by putting every attribute of the event in a
 * fresh table: a dozen strings made and interned, most of which a handler
 * never looks at. The table now starts with `data` and `subject` only
 * (the one attribute nearly every handler reads); the event's other
 * attributes wait in a copy beside it and enter the table the first time
 * the handler reads them (`__index`). Whatever the handler does, it sees
 * what the eager table showed: pairs(), the JSON encoder, an assignment
 * (of nil too), setmetatable() and the sandbox's next() first put every
 * attribute in the table, which is then a plain table; an event kept past
 * its run keeps its copy. Only rawget() on a table not yet completed sees
 * less (the subject and what the handler has read).
 */
#ifndef MT_LUA_EVENT_H
#define MT_LUA_EVENT_H
#include <stdbool.h>
#include <stdint.h>
#include <lua.h>
#include "mt_event.h"

/*
 * Pushes a new event table for 'ev' (its attributes; not its data, which
 * the caller sets as the field "data") with `attempt`. Raises on memory:
 * call it in protected mode. [-0, +1]
 */
void mt_lua_event_push(lua_State *L, const mt_event *ev, uint32_t attempt);

/*
 * If the value at 'idx' is an event table whose attributes are not all in
 * it yet, puts them in and makes it a plain table. Never raises: false
 * when the state is out of memory. Any other value is left alone (true).
 */
bool mt_lua_event_complete(lua_State *L, int idx);

#endif

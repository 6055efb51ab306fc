/*
 * mt_lua_handler.h - part of mt_lua: Lua subscription handlers.
 *
 * The mt_sub_runner that loads a subscription's handler file into its own
 * sandboxed state (memory limit and instruction budget from the
 * subscription's `limits`, require paths: the project's lua/ and the
 * handler's directory) and calls it as handler(event, ctx) for each event.
 *
 * event: every CloudEvents and engine attribute (sequence and streamversion
 * as integers), extension attributes, `data` decoded from JSON (64-bit
 * integers stay integers; text and binary data as strings) and `attempt`.
 * ctx: emit(type, data, {subject=}) -> sequence; kv(name) -> t with
 * t:get(k), t:put(k, v), t:del(k), t:scan(prefix) -> {{key=, value=}...};
 * log.debug/info/warn/error(...); now() -> the event's time in ms since
 * the epoch; reject(reason), which stops the handler and dead-letters the
 * event at once. A Lua error discards every effect of that attempt.
 */
#ifndef MT_LUA_HANDLER_H
#define MT_LUA_HANDLER_H
#include "mt_sub.h"

/* The runner; a static object, never freed. */
const mt_sub_runner *mt_lua_sub_runner(void);

#endif

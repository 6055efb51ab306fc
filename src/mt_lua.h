/*
 * mt_lua.h - the Lua foundation for handlers: a sandboxed, memory-capped
 * lua_State with an instruction budget per call, handler loading, the one
 * entry point into Lua, and the bridge between JSON (jansson) and Lua values.
 *
 * Each handler gets its own mt_lua on each worker that runs it, so handlers
 * never see each other's globals and one can be reloaded alone. An mt_lua is
 * used by one thread at a time; different mt_lua objects are independent.
 *
 * The sandbox opens only base, string, table, math and utf8, then removes
 * dofile, loadfile, collectgarbage, warn, string.dump, math.random and
 * math.randomseed (handlers must be deterministic: they are re-run after a
 * crash). `load` accepts text chunks only (mode "t"); `setmetatable` refuses
 * metatables with __gc (a finalizer would run outside any budget); `print`
 * goes to the log callback at info level. There is no io, os, package,
 * debug or coroutine. `require(name)` is the host's loader: it maps
 * "a.b" to "a/b.lua", searches only the configured directories, loads text
 * chunks into the sandbox's globals and caches results in the registry
 * table "moontide.loaded". `require("moontide.json")` is built in:
 *
 *   json.encode(v)   compact JSON text, object keys sorted; raises on values
 *                    JSON cannot hold (functions, NaN, sparse arrays, cycles)
 *   json.decode(s)   a Lua value, or nil plus a message for invalid JSON
 *   json.null        the sentinel standing for JSON null
 *   json.array(t)    marks t (or a new table) to encode as an array
 *   json.object(t)   marks t (or a new table) to encode as an object
 *
 * Value mapping: JSON integers are lua_Integer (64 bits, both ways), reals
 * are floats (2.0 stays 2.0), strings are strings, null is json.null.
 * Decoded arrays and objects carry the metatables "moontide.json.array" and
 * "moontide.json.object", so [] and {} survive a round trip. An unmarked
 * table with keys 1..n is an array, one with string keys an object, and an
 * unmarked empty table is an object. Nesting is limited to
 * MT_LUA_JSON_MAX_DEPTH levels.
 *
 * Not covered by the budget: time spent inside one library call (a
 * pathological string.find pattern, say); memory bounds string.rep and
 * friends. Symbolic links inside a module directory are followed.
 */
#ifndef MT_LUA_H
#define MT_LUA_H
#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_diag.h"
#include "mt_err.h"
#include "mt_lua_json.h"
#include "mt_mem.h"

#define MT_LUA_DEFAULT_MEM ((size_t) 64 << 20) /* bytes per state */
#define MT_LUA_DEFAULT_BUDGET 10000000u        /* VM instructions per call */
#define MT_LUA_MAX_SOURCE ((size_t) 16 << 20)  /* largest handler or module file */

typedef struct mt_lua mt_lua;

/* Receives print() output (and, later, ctx.log). 'msg' is valid during the call. */
typedef void (*mt_lua_log_fn)(void *arg, mt_diag_level level, const char *msg);

typedef struct mt_lua_opts {
    size_t mem_limit;         /* bytes for the whole state; 0 = MT_LUA_DEFAULT_MEM */
    uint64_t budget;          /* VM instructions per mt_lua_call; 0 = default */
    const char *const *paths; /* directories require() searches, in order; copied */
    int npaths;               /* entries in 'paths' */
    mt_lua_log_fn log;        /* NULL = print() output is dropped */
    void *log_arg;            /* passed to 'log' */
} mt_lua_opts;

/*
 * Creates a sandboxed state. 'opts' may be NULL for the defaults (no module
 * paths, no log). Sets *out (NULL on error). MT_EINVAL if a path is NULL or
 * empty or npaths is negative; MT_ENOMEM if the state cannot be built within
 * mem_limit or the process is out of memory. Free with mt_lua_free().
 */
mt_err mt_lua_new(const mt_lua_opts *opts, mt_lua **out);

/* Closes the state and releases everything it holds. NULL does nothing. */
void mt_lua_free(mt_lua *lu);

/* The state, for pushing arguments and reading results. Lives as long as 'lu'. */
lua_State *mt_lua_state(mt_lua *lu);

/* The mt_lua owning a state made by mt_lua_new (for bindings). */
mt_lua *mt_lua_from_state(lua_State *L);

/*
 * Loads a handler file as a text chunk and runs it (through mt_lua_call, so
 * under the budget). It must return a function, or a table whose 'handle'
 * field is a function; the returned value is kept in the registry (a
 * previous handler of this state is released). On failure writes a message
 * into err (errlen bytes): syntax errors read "PATH:LINE: message" with PATH
 * as given. MT_ENOTFOUND if the file does not exist, MT_EIO if it cannot be
 * read, MT_ETOOBIG over MT_LUA_MAX_SOURCE, MT_ELUA for a syntax error, a
 * binary chunk, an error while running the chunk, the memory limit or
 * budget, or a wrong return value. The stack is left as it was.
 */
mt_err mt_lua_load_file(mt_lua *lu, const char *path, char *err, size_t errlen);

/*
 * Reads a whole handler or module file into a new buffer (caller frees,
 * NUL-terminated), without blocking: a regular file of at most
 * MT_LUA_MAX_SOURCE bytes. On failure writes a message into err:
 * MT_ENOTFOUND, MT_EIO (not a regular file, unreadable), MT_ETOOBIG,
 * MT_ENOMEM.
 */
mt_err mt_lua_read_source(const char *path, char **buf, size_t *len, char *err, size_t errlen);

/*
 * mt_lua_load_file with the file's text given (len bytes at 'src', already
 * read): a reload loads the very bytes its trial load checked.
 */
mt_err mt_lua_load_source(mt_lua *lu, const char *path, const char *src, size_t len, char *err,
                          size_t errlen);

/*
 * Compiles 'path' in a fresh default state and discards it (moontide check).
 * Does not run it. Same errors and messages as mt_lua_load_file.
 */
mt_err mt_lua_check_file(const char *path, char *err, size_t errlen);

/*
 * Pushes the loaded handler function (the value returned, or its 'handle').
 * MT_ENOTFOUND if no handler is loaded, MT_ENOMEM if the stack cannot grow
 * (nothing pushed either way). Never raises.
 */
mt_err mt_lua_push_handler(mt_lua *lu);

/*
 * True if the loaded handler is a table whose raw field 'name' is not nil.
 * False for a function handler or none. Never raises.
 */
bool mt_lua_has_field(mt_lua *lu, const char *name);

/*
 * Pushes the raw field 'name' of the loaded handler table (nil if absent or
 * the handler is a function) and returns its Lua type (LUA_TNIL ...), or
 * LUA_TNONE with nothing pushed if the stack cannot grow. Never raises.
 */
int mt_lua_push_field(mt_lua *lu, const char *name);

/*
 * The one entry point into Lua. Calls the function below 'nargs' arguments
 * on the stack, like lua_pcall, with a traceback message handler and the
 * instruction budget armed. Once the budget is spent, every further
 * instruction raises again, so the handler's own pcall cannot swallow it.
 * On MT_OK the function and arguments are replaced by 'nresults' results
 * (nresults >= 0). On MT_ELUA they are popped and the message is appended
 * to 'error' and the traceback ("stack traceback:\n...", when one exists)
 * to 'traceback'; either may be NULL. Messages: the error string as raised
 * ("handlers/x.lua:3: boom"); a value with __tostring through it; a table
 * as compact JSON ({"code":"E1"}, cut to about 1 KiB); "instruction budget
 * of N exceeded"; "memory limit of N bytes exceeded". Not reentrant:
 * bindings call Lua with lua_call, which stays under the armed budget.
 */
mt_err mt_lua_call(mt_lua *lu, int nargs, int nresults, mt_buf *error, mt_buf *traceback);

#endif

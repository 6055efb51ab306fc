#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "mt_lua.h"
#include "mt_lua_event.h"
#include "mt_lua_int.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void) (p), (void) (n))
#define UNPOISON(p, n) ((void) (p), (void) (n))
#endif

#define HOOK_CHUNK (1 << 30) /* largest count armed at once: lua_sethook takes an int */
#define MAX_MODULE_NAME 200  /* bytes in a require() name */
#define LUA_MEMERRMSG "not enough memory"
#define SMALL_MAX 256                    /* blocks up to this size are kept for reuse */
#define SMALL_STEP 16                    /* ... in classes of this many bytes */
#define SMALL_CLASSES (SMALL_MAX / SMALL_STEP)
#define SMALL_KEEP (256u << 10)          /* bytes of free small blocks a state keeps */

typedef struct free_block {
    struct free_block *next;
} free_block;

struct mt_lua {
    lua_State *L;
    size_t limit;       /* bytes the allocator hands out in total */
    size_t used;        /* bytes the state holds now */
    bool unlimited;     /* the message handler is formatting: limit lifted briefly */
    bool mem_failed;    /* an allocation was refused since the call or load began */
    uint64_t budget;    /* VM instructions per mt_lua_call */
    uint64_t remaining; /* instructions left in this call, the armed chunk included */
    int armed;          /* the count the hook was last armed with */
    bool exhausted;     /* the budget is spent: the hook raises on every instruction */
    bool in_call;       /* inside mt_lua_call (which is not reentrant) */
    char **paths;       /* owned; module directories */
    int npaths;
    mt_lua_log_fn log; /* may be NULL */
    void *log_arg;
    int module_ref; /* registry ref of what the handler file returned, or LUA_NOREF */
    int handle_ref; /* registry ref of the handler function, or LUA_NOREF */
    mt_buf trace;   /* traceback recorded by the message handler, or where memory ran out */
    free_block *small[SMALL_CLASSES]; /* freed small blocks, by class (small_get) */
    size_t small_kept;                /* bytes in 'small' */
};

/* Its address marks a module whose chunk is still running (a require loop). */
static char loading_tag;

/* ---- allocation and state ---- */

/*
 * Small blocks. Every handler run makes tables, strings and closures that
 * the collector frees soon after, in sweeps of hundreds: glibc's per-thread
 * cache holds seven blocks of a size, so most of them went through its
 * slower paths. A state keeps up to SMALL_KEEP bytes of freed blocks of up
 * to SMALL_MAX bytes, by class of SMALL_STEP bytes, and hands them out
 * again; each block of a class is the class's full size, so a block can
 * grow within its class in place. Kept blocks are poisoned for
 * AddressSanitizer, which then still sees a use after free.
 */
static size_t small_class(size_t n)
{
    return (n - 1) / SMALL_STEP;
}

static void *small_get(mt_lua *lu, size_t n)
{
    size_t c = small_class(n), size = (c + 1) * SMALL_STEP;
    free_block *b = lu->small[c];
    if (!b) {
        return malloc(size);
    }
    UNPOISON(b, size);
    lu->small[c] = b->next;
    lu->small_kept -= size;
    return b;
}

static void small_put(mt_lua *lu, void *p, size_t n)
{
    size_t c = small_class(n), size = (c + 1) * SMALL_STEP;
    if (lu->small_kept + size > SMALL_KEEP) {
        free(p);
        return;
    }
    free_block *b = p;
    b->next = lu->small[c];
    lu->small[c] = b;
    lu->small_kept += size;
    POISON(b, size);
}

static void small_free_all(mt_lua *lu)
{
    for (size_t c = 0; c < SMALL_CLASSES; c++) {
        while (lu->small[c]) {
            free_block *b = lu->small[c];
            UNPOISON(b, (c + 1) * SMALL_STEP);
            lu->small[c] = b->next;
            free(b);
        }
    }
    lu->small_kept = 0;
}

/* Frees a block the state held with size n. */
static void block_free(mt_lua *lu, void *p, size_t n)
{
    if (n <= SMALL_MAX) {
        small_put(lu, p, n);
    } else {
        free(p);
    }
}

/* Resizes a block of 'old' bytes (NULL: a new one) to 'n' > 0 bytes; NULL if that fails. */
static void *block_resize(mt_lua *lu, void *p, size_t old, size_t n)
{
    if (!p) {
        return n <= SMALL_MAX ? small_get(lu, n) : malloc(n);
    }
    if (old > SMALL_MAX && n > SMALL_MAX) {
        return realloc(p, n);
    }
    if (old <= SMALL_MAX && n <= SMALL_MAX && small_class(old) == small_class(n)) {
        return p; /* the block has its class's full size */
    }
    void *q = n <= SMALL_MAX ? small_get(lu, n) : malloc(n);
    if (q) {
        memcpy(q, p, old < n ? old : n);
        block_free(lu, p, old);
    }
    return q;
}

#define MEM_TRACE_LEVELS 20 /* frames a memory failure's traceback shows at most */

/*
 * Records in lu->trace where the running call is as an allocation is
 * refused: Lua raises a memory error without calling the message handler,
 * so the dead letter had no traceback for it. Only reads the call stack
 * (lua_getstack, lua_getinfo without 'f' or 'L' push nothing and allocate
 * nothing in the state), so it is safe inside the allocator; the text is
 * built in C memory. The last refusal wins: Lua retries once after an
 * emergency collection, and the refusal that fails the call is the last.
 */
static void trace_refusal(mt_lua *lu)
{
    lua_State *L = lu->L;
    mt_buf *b = &lu->trace;
    b->len = 0;
    mt_buf_adds(b, "stack traceback:");
    lua_Debug ar;
    int level = 0;
    for (; level < MEM_TRACE_LEVELS && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sln", &ar)) {
            break;
        }
        mt_buf_addf(b, "\n\t%s:", ar.short_src);
        if (ar.currentline > 0) {
            mt_buf_addf(b, "%d:", ar.currentline);
        }
        if (ar.name) {
            mt_buf_addf(b, " in %s '%s'", *ar.namewhat ? ar.namewhat : "function", ar.name);
        } else if (*ar.what == 'm') {
            mt_buf_adds(b, " in main chunk");
        } else if (*ar.what == 'C') {
            mt_buf_adds(b, " in ?");
        } else {
            mt_buf_addf(b, " in function <%s:%d>", ar.short_src, ar.linedefined);
        }
    }
    if (level == MEM_TRACE_LEVELS && lua_getstack(L, level, &ar)) {
        mt_buf_adds(b, "\n\t...");
    }
}

/*
 * Every byte the state holds goes through here, so the limit covers the
 * whole state (the limit counts what Lua asked for; freed small blocks kept
 * for reuse are at most SMALL_KEEP more). Growing past it returns NULL,
 * which Lua turns into LUA_ERRMEM after an emergency collection. Shrinking
 * never fails.
 */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mt_lua *lu = ud;
    size_t old = ptr ? osize : 0; /* for a new block osize is a type tag */
    if (nsize == 0) {
        if (ptr) {
            block_free(lu, ptr, old);
        }
        lu->used -= old;
        return NULL;
    }
    if (nsize > old && !lu->unlimited &&
        (nsize - old > lu->limit || lu->used > lu->limit - (nsize - old))) {
        lu->mem_failed = true;
        if (lu->in_call) {
            trace_refusal(lu);
        }
        return NULL;
    }
    void *p = block_resize(lu, ptr, old, nsize);
    if (!p) {
        if (nsize > old) {
            return NULL;
        }
        /* A failed shrink keeps the larger block; freed later as this size, it is
         * still at least as large as that size's class. */
        p = ptr;
    }
    lu->used = lu->used - old + nsize;
    return p;
}

/* An error outside any protected call is a bug in the host, never in a handler. */
static int l_lua_panic(lua_State *L)
{
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    fprintf(stderr, "moontide: Lua error outside a protected call: %s\n", msg);
    mt_assert_fail("Lua error outside a protected call", __FILE__, __LINE__);
}

mt_lua *mt_lua_from_state(lua_State *L)
{
    return *(mt_lua **) lua_getextraspace(L);
}

lua_State *mt_lua_state(mt_lua *lu)
{
    return lu->L;
}

size_t mt_lua__mem_limit(lua_State *L)
{
    return mt_lua_from_state(L)->limit;
}

/* ---- the sandbox's replacements for base functions ---- */

/* load(chunk [, chunkname [, mode [, env]]]): text chunks only. [-(1..4), +(1|2)] */
static int l_lua_load(lua_State *L)
{
    const char *mode = luaL_optstring(L, 3, "t");
    if (strcmp(mode, "t") != 0) {
        luaL_pushfail(L);
        lua_pushfstring(L, "load: only text chunks are allowed (mode '%s' refused)", mode);
        return 2;
    }
    if (lua_gettop(L) < 3) {
        lua_settop(L, 3);
    }
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    /* env stays absent unless given: the original load then uses the sandbox's globals */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int l_raw_next(lua_State *L);

/* Completes an event table or a lazily decoded object at 'idx' (anything else stays). */
static void complete_lazy(lua_State *L, int idx)
{
    if (!mt_lua_event_complete(L, idx)) {
        luaL_error(L, "not enough memory");
    }
    mt_err rc = mt_lua_json_complete(L, idx);
    if (rc == MT_ENOMEM) {
        luaL_error(L, "not enough memory");
    } else if (rc) {
        luaL_error(L, "nesting deeper than %d levels", MT_LUA_JSON_MAX_DEPTH);
    }
}

/*
 * next(t, k), seeing what pairs sees: a table read lazily (the event, its
 * data) is completed first. Lua's own next showed only what had been read,
 * and the key under which the event keeps its copy.
 */
static int l_lua_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    complete_lazy(L, 1);
    return l_raw_next(L);
}

/*
 * setmetatable(t, mt), refusing __gc: a finalizer runs whenever the
 * collector gets to it, possibly outside any call and so outside the budget.
 * A __gc field added later has no effect (Lua marks objects only here).
 * [-2, +1]
 */
static int l_lua_setmetatable(lua_State *L)
{
    complete_lazy(L, 1);
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL) {
            return luaL_error(L, "setmetatable: __gc metamethods are not allowed in handlers");
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/*
 * True if the error just caught (status st, its object on top) is the
 * memory limit: Lua's own memory error, or that one raised again by an
 * inner pcall below.
 */
static bool caught_memory(lua_State *L, int st)
{
    return st == LUA_ERRMEM ||
           (st != LUA_OK && mt_lua_from_state(L)->mem_failed &&
            lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), LUA_MEMERRMSG) == 0);
}

/*
 * pcall(f, ...) as Lua's, except that the memory limit passes through:
 * like the instruction budget, it fails the run, so a handler cannot catch
 * it and commit what it did. (No coroutines in the sandbox: no yields to
 * carry across.) [-n, +r]
 */
static int l_lua_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (caught_memory(L, st)) {
        return lua_error(L);
    }
    lua_pushboolean(L, st == LUA_OK);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* xpcall(f, msgh, ...), the same way. [-n, +r] */
static int l_lua_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_replace(L, 1); /* msgh, f, args..., f */
    lua_replace(L, 2); /* msgh, f, args... */
    int st = lua_pcall(L, n - 2, LUA_MULTRET, 1);
    if (caught_memory(L, st)) {
        return lua_error(L);
    }
    lua_pushboolean(L, st == LUA_OK);
    lua_replace(L, 1);
    return lua_gettop(L);
}

/* print(...): to the log callback at info level, never to stdout. [-n, +0] */
static int l_lua_print(lua_State *L)
{
    mt_lua *lu = mt_lua_from_state(L);
    if (!lu->log) {
        return 0;
    }
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) {
            luaL_addchar(&b, '\t');
        }
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lu->log(lu->log_arg, MT_DIAG_INFO, lua_tostring(L, -1));
    return 0;
}

/* ---- files and modules ---- */

mt_err mt_lua_read_source(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    /* Non-blocking: a FIFO or a device at the path must not hold the loop thread. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(e));
        return e == ENOENT || e == ENOTDIR ? MT_ENOTFOUND : MT_EIO;
    }
    struct stat st;
    mt_err rc = MT_OK;
    char *b = NULL;
    size_t got = 0;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
        rc = MT_EIO;
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "cannot read %s: not a regular file", path);
        rc = MT_EIO;
        goto done;
    }
    if ((uint64_t) st.st_size > MT_LUA_MAX_SOURCE) {
        snprintf(err, errlen, "%s: larger than %zu bytes", path, MT_LUA_MAX_SOURCE);
        rc = MT_ETOOBIG;
        goto done;
    }
    size_t size = (size_t) st.st_size;
    b = mt_trymalloc(size + 1);
    if (!b) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = MT_ENOMEM;
        goto done;
    }
    while (got < size) {
        ssize_t n = read(fd, b + got, size - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
            rc = MT_EIO;
            goto done;
        }
        if (n == 0) {
            break;
        }
        got += (size_t) n;
    }
done:
    close(fd);
    if (rc) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = got;
    return MT_OK;
}

/*
 * Lua shortens a long chunk name to "...tail" in messages; put the path
 * back as given, so a syntax error always reads "PATH:LINE: message".
 */
static void format_load_error(const char *msg, const char *path, char *err, size_t errlen)
{
    size_t plen = strlen(path);
    if (strncmp(msg, path, plen) == 0 && msg[plen] == ':') {
        snprintf(err, errlen, "%s", msg);
        return;
    }
    if (strncmp(msg, "...", 3) == 0) {
        const char *rest = msg + 3;
        for (size_t n = plen; n > 0; n--) {
            if (strncmp(rest, path + plen - n, n) == 0 && rest[n] == ':') {
                snprintf(err, errlen, "%s%s", path, rest + n);
                return;
            }
        }
    }
    snprintf(err, errlen, "%s: %s", path, msg);
}

/*
 * Loads 'path' as a text chunk whose _ENV is the sandbox's globals and
 * pushes it; pushes nothing on failure. Never raises: lua_load is protected
 * and nothing here allocates Lua memory outside it.
 */
/* Compiles 'given' (len bytes) as the text of 'path', or, if NULL, the file read. */
static mt_err compile_file(mt_lua *lu, const char *path, const char *given, size_t len, char *err,
                           size_t errlen)
{
    lua_State *L = lu->L;
    if (!lua_checkstack(L, 2)) {
        snprintf(err, errlen, "%s: Lua stack exhausted", path);
        return MT_ELUA;
    }
    char *src = NULL;
    if (!given) {
        mt_err rc = mt_lua_read_source(path, &src, &len, err, errlen);
        if (rc) {
            return rc;
        }
        given = src;
    }
    char *chunkname = mt_xasprintf("@%s", path);
    lu->mem_failed = false;
    int st = luaL_loadbufferx(L, given, len, chunkname, "t");
    free(chunkname);
    free(src);
    if (st == LUA_OK) {
        return MT_OK;
    }
    if (st == LUA_ERRMEM) {
        snprintf(err, errlen, "%s: memory limit of %zu bytes exceeded", path, lu->limit);
    } else {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "load failed";
        format_load_error(msg, path, err, errlen);
    }
    lua_pop(L, 1);
    return MT_ELUA;
}

/* Dotted words of letters, digits, '_' and '-': no empty word, so no "..", no '/'. */
static bool valid_module_name(const char *name, size_t len)
{
    if (len == 0 || len > MAX_MODULE_NAME) {
        return false;
    }
    bool word_start = true;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char) name[i];
        if (c == '.') {
            if (word_start) {
                return false;
            }
            word_start = true;
        } else if (isalnum(c) || c == '_' || c == '-') {
            word_start = false;
        } else {
            return false;
        }
    }
    return !word_start;
}

/*
 * __close of the guard require() holds while a module's chunk runs: if the
 * chunk failed, forget the "loading" mark so a later require tries again.
 * [-2, +0]
 */
static int l_lua_require_guard_close(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "moontide.loaded");
    lua_rawgeti(L, 1, 1);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_touserdata(L, -1) == &loading_tag) {
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawset(L, -3);
    }
    return 0;
}

/*
 * require(name): the cached module, or NAME.lua (dots become '/') from the
 * first configured directory that has it, run with (name, file) and cached
 * in "moontide.loaded" (true if it returned nothing). [-1, +1]
 */
static int l_lua_require(lua_State *L)
{
    mt_lua *lu = mt_lua_from_state(L);
    size_t nlen;
    const char *name = luaL_checklstring(L, 1, &nlen);
    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "moontide.loaded"); /* 2 */
    lua_pushvalue(L, 1);
    lua_rawget(L, 2);
    if (lua_touserdata(L, -1) == &loading_tag) {
        return luaL_error(L, "require: module '%s' requires itself while loading", name);
    }
    if (!lua_isnil(L, -1)) {
        return 1;
    }
    lua_pop(L, 1);
    if (!valid_module_name(name, nlen)) {
        return luaL_error(L,
                          "require: invalid module name '%s' (dotted words of letters, "
                          "digits, '_' and '-')",
                          name);
    }
    char rel[MAX_MODULE_NAME + 1];
    memcpy(rel, name, nlen + 1);
    for (char *p = rel; *p; p++) {
        if (*p == '.') {
            *p = '/';
        }
    }
    int found = 0;
    for (int i = 0; i < lu->npaths && !found; i++) {
        const char *file = lua_pushfstring(L, "%s/%s.lua", lu->paths[i], rel); /* 3 */
        const char *chunkname = lua_pushfstring(L, "@%s", file);               /* 4 */
        char err[512];
        char *src;
        size_t len;
        mt_err rc = mt_lua_read_source(file, &src, &len, err, sizeof err);
        if (rc == MT_ENOTFOUND) {
            lua_pop(L, 2);
            continue;
        }
        if (rc) {
            return luaL_error(L, "require '%s': %s", name, err);
        }
        int st = luaL_loadbufferx(L, src, len, chunkname, "t");
        free(src);
        if (st != LUA_OK) {
            return lua_error(L);
        }
        lua_remove(L, 4); /* 4: the chunk */
        found = 1;
    }
    if (!found) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, "module '");
        luaL_addstring(&b, name);
        luaL_addstring(&b, "' not found in the module paths");
        for (int i = 0; i < lu->npaths; i++) {
            luaL_addstring(&b, i ? ", " : " (");
            luaL_addstring(&b, lu->paths[i]);
            luaL_addstring(&b, i == lu->npaths - 1 ? ")" : "");
        }
        luaL_pushresult(&b);
        return lua_error(L);
    }
    /* Mark it loading; the guard clears the mark if the chunk raises. */
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &loading_tag);
    lua_rawset(L, 2);
    lua_createtable(L, 1, 0); /* 5: the guard */
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    luaL_setmetatable(L, "moontide.require.guard");
    lua_toclose(L, 5);
    lua_pushvalue(L, 4);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 3);
    lua_call(L, 2, 1); /* 6: the module */
    if (lua_isnil(L, 6)) {
        lua_pushboolean(L, 1);
        lua_replace(L, 6);
    }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 6);
    lua_rawset(L, 2);
    return 1;
}

/* ---- setting up ---- */

/* Builds the sandbox; run protected by mt_lua_new. [-0, +0] */
static int l_lua_setup(lua_State *L)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {NULL, NULL},
    };
    static const char *const removed[] = {"dofile", "loadfile", "collectgarbage", "warn", NULL};
    for (const luaL_Reg *lib = libs; lib->name; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    lua_pushglobaltable(L);
    for (const char *const *n = removed; *n; n++) {
        lua_pushnil(L);
        lua_setfield(L, -2, *n);
    }
    lua_getfield(L, -1, "load");
    lua_pushcclosure(L, l_lua_load, 1);
    lua_setfield(L, -2, "load");
    lua_getfield(L, -1, "setmetatable");
    lua_pushcclosure(L, l_lua_setmetatable, 1);
    lua_setfield(L, -2, "setmetatable");
    lua_pushcfunction(L, l_lua_next);
    lua_setfield(L, -2, "next");
    lua_pushcfunction(L, l_lua_print);
    lua_setfield(L, -2, "print");
    lua_pushcfunction(L, l_lua_pcall);
    lua_setfield(L, -2, "pcall");
    lua_pushcfunction(L, l_lua_xpcall);
    lua_setfield(L, -2, "xpcall");
    lua_pushcfunction(L, l_lua_require);
    lua_setfield(L, -2, "require");
    lua_getfield(L, -1, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    /* the generator is seeded from the clock: handlers must be deterministic */
    lua_getfield(L, -1, LUA_MATHLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "random");
    lua_pushnil(L);
    lua_setfield(L, -2, "randomseed");
    lua_pop(L, 2);

    lua_newtable(L);
    mt_lua__open_json(L);
    lua_setfield(L, -2, "moontide.json");
    lua_setfield(L, LUA_REGISTRYINDEX, "moontide.loaded");
    luaL_newmetatable(L, "moontide.require.guard");
    lua_pushcfunction(L, l_lua_require_guard_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    return 0;
}

mt_err mt_lua_new(const mt_lua_opts *opts, mt_lua **out)
{
    *out = NULL;
    static const mt_lua_opts defaults = {0};
    if (!opts) {
        opts = &defaults;
    }
    if (opts->npaths < 0 || (opts->npaths > 0 && !opts->paths)) {
        return MT_EINVAL;
    }
    for (int i = 0; i < opts->npaths; i++) {
        if (!opts->paths[i] || !*opts->paths[i]) {
            return MT_EINVAL;
        }
    }
    mt_lua *lu = mt_xcalloc(1, sizeof *lu);
    lu->module_ref = LUA_NOREF;
    lu->handle_ref = LUA_NOREF;
    mt_buf_init(&lu->trace);
    lu->limit = opts->mem_limit ? opts->mem_limit : MT_LUA_DEFAULT_MEM;
    lu->budget = opts->budget ? opts->budget : MT_LUA_DEFAULT_BUDGET;
    lu->log = opts->log;
    lu->log_arg = opts->log_arg;
    if (opts->npaths > 0) {
        lu->paths = mt_xcalloc((size_t) opts->npaths, sizeof *lu->paths);
        for (int i = 0; i < opts->npaths; i++) {
            lu->paths[i] = mt_xstrdup(opts->paths[i]);
        }
        lu->npaths = opts->npaths;
    }
    lu->L = lua_newstate(capped_alloc, lu);
    if (!lu->L) {
        goto fail;
    }
    *(mt_lua **) lua_getextraspace(lu->L) = lu;
    lua_atpanic(lu->L, l_lua_panic);
    lua_pushcfunction(lu->L, l_lua_setup);
    if (lua_pcall(lu->L, 0, 0, 0) != LUA_OK) {
        goto fail; /* only memory can fail here */
    }
    *out = lu;
    return MT_OK;
fail:
    mt_lua_free(lu);
    return MT_ENOMEM;
}

void mt_lua_free(mt_lua *lu)
{
    if (!lu) {
        return;
    }
    if (lu->L) {
        lua_close(lu->L);
        mt_assert(lu->used == 0);
    }
    small_free_all(lu);
    for (int i = 0; i < lu->npaths; i++) {
        free(lu->paths[i]);
    }
    free(lu->paths);
    mt_buf_free(&lu->trace);
    free(lu);
}

/* ---- calling ---- */

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Arms the count hook for the rest of the budget, at most HOOK_CHUNK at a time. */
static void arm(mt_lua *lu)
{
    lu->armed = lu->remaining > HOOK_CHUNK ? HOOK_CHUNK : (int) lu->remaining;
    lua_sethook(lu->L, budget_hook, LUA_MASKCOUNT, lu->armed);
}

/*
 * Fires every 'armed' instructions. Once the budget is spent it re-arms
 * with a count of 1, so every later instruction raises again: a pcall in
 * the handler may catch one error but cannot run on.
 */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void) ar;
    mt_lua *lu = mt_lua_from_state(L);
    if (!lu->exhausted) {
        lu->remaining -= (uint64_t) lu->armed;
        if (lu->remaining > 0) {
            arm(lu);
            return;
        }
        lu->exhausted = true;
        lu->armed = 1;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    }
    char msg[64];
    snprintf(msg, sizeof msg, "instruction budget of %" PRIu64 " exceeded", lu->budget);
    lua_pushstring(L, msg);
    lua_error(L);
}

/* Collects at most the first sizeof data bytes of a JSON dump. */
typedef struct capped_text {
    char data[1024];
    size_t len;
    bool truncated;
} capped_text;

static int capped_dump(const char *buffer, size_t size, void *arg)
{
    capped_text *t = arg;
    size_t room = sizeof t->data - t->len;
    if (size > room) {
        size = room;
        t->truncated = true;
    }
    memcpy(t->data + t->len, buffer, size);
    t->len += size;
    return 0;
}

/* Drops a UTF-8 sequence cut short at the end of s[0..len). */
static size_t utf8_trim(const char *s, size_t len)
{
    size_t i = len;
    while (i > 0 && len - i < 4 && ((unsigned char) s[i - 1] & 0xc0) == 0x80) {
        i--;
    }
    if (i == 0 || ((unsigned char) s[i - 1] & 0xc0) != 0xc0) {
        return len; /* ends in ASCII or a malformed run: leave it */
    }
    unsigned char lead = (unsigned char) s[i - 1];
    size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    return len - (i - 1) < need ? i - 1 : len;
}

/*
 * Pushes the text of the error value at 'idx': strings as they are,
 * __tostring when present, other tables as compact JSON (at most about
 * 1 KiB). [-0, +1]
 */
static void push_error_text(lua_State *L, mt_lua *lu, int idx)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) {
        lua_pushvalue(L, idx);
        return;
    }
    if (t == LUA_TNUMBER) {
        luaL_tolstring(L, idx, NULL);
        return;
    }
    if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
        lua_pop(L, 1);
        luaL_tolstring(L, idx, NULL); /* runs the handler's code, so under its limits */
        return;
    }
    if (t == LUA_TTABLE) {
        json_t *j;
        size_t reals;
        if (mt_lua_to_json(L, idx, &j, &reals, NULL, 0) == MT_OK) {
            capped_text text = {.len = 0};
            int bad = json_dump_callback(j, capped_dump, &text,
                                         JSON_COMPACT | JSON_SORT_KEYS | reals);
            json_decref(j);
            if (!bad) {
                /* the JSON is released before anything here can raise */
                lu->unlimited = true;
                if (text.truncated) {
                    lua_pushlstring(L, text.data, utf8_trim(text.data, text.len - 3));
                    lua_pushliteral(L, "...");
                    lua_concat(L, 2);
                } else {
                    lua_pushlstring(L, text.data, text.len);
                }
                lu->unlimited = false;
                return;
            }
        }
    }
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

/*
 * Message handler of mt_lua_call: replaces the error value by its text and
 * records the traceback in lu->trace. The limit is lifted while it formats,
 * so a handler that failed near its memory limit still gets a traceback.
 * [-1, +1]
 */
static int l_lua_msgh(lua_State *L)
{
    mt_lua *lu = mt_lua_from_state(L);
    push_error_text(L, lu, 1);
    lu->unlimited = true;
    luaL_traceback(L, L, NULL, 1);
    size_t n;
    const char *tb = lua_tolstring(L, -1, &n);
    lu->trace.len = 0;
    mt_buf_add(&lu->trace, tb, n);
    lua_pop(L, 1);
    lu->unlimited = false;
    return 1;
}

mt_err mt_lua_call(mt_lua *lu, int nargs, int nresults, mt_buf *error, mt_buf *traceback)
{
    mt_assert(lu && nargs >= 0 && nresults >= 0 && !lu->in_call);
    lua_State *L = lu->L;
    int base = lua_gettop(L) - nargs; /* the function's index */
    mt_assert(base >= 1);
    if (!lua_checkstack(L, 1)) {
        lua_settop(L, base - 1);
        if (error) {
            mt_buf_adds(error, "Lua stack exhausted");
        }
        return MT_ELUA;
    }
    lua_pushcfunction(L, l_lua_msgh);
    lua_insert(L, base);
    lu->in_call = true;
    lu->exhausted = false;
    lu->mem_failed = false;
    lu->trace.len = 0;
    lu->remaining = lu->budget;
    arm(lu);
    int st = lua_pcall(L, nargs, nresults, base);
    lua_sethook(L, NULL, 0, 0);
    lu->in_call = false;
    lu->unlimited = false;
    if (st == LUA_OK && !lu->exhausted) {
        lua_remove(L, base);
        mt_assert(lua_gettop(L) == base - 1 + nresults);
        return MT_OK;
    }
    /*
     * A C function called directly may return after catching the budget
     * error; the call still failed.
     */
    char msg[96];
    const char *text = msg;
    size_t len;
    if (lu->exhausted) {
        len = (size_t) snprintf(msg, sizeof msg, "instruction budget of %" PRIu64 " exceeded",
                                lu->budget);
    } else if (caught_memory(L, st)) {
        /* also when pcall raised it again (LUA_ERRRUN then) */
        len = (size_t) snprintf(msg, sizeof msg, "memory limit of %zu bytes exceeded", lu->limit);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        text = lua_tolstring(L, -1, &len);
    } else {
        len = (size_t) snprintf(msg, sizeof msg, "(error object is a %s value)",
                                luaL_typename(L, -1));
    }
    if (error) {
        mt_buf_add(error, text, len);
    }
    if (traceback && (st == LUA_ERRRUN || st == LUA_ERRMEM) && lu->trace.len) {
        mt_buf_add(traceback, lu->trace.data, lu->trace.len);
    }
    lua_settop(L, base - 1);
    if (lu->mem_failed) {
        /* give back what the failed call piled up before the next one */
        lua_gc(L, LUA_GCCOLLECT);
    }
    return MT_ELUA;
}

/* next(t, k) without metamethods. */
static int l_raw_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1)) {
        return 2;
    }
    lua_pushnil(L);
    return 1;
}

int mt_lua__fill_then_set(lua_State *L, void (*fill)(lua_State *L, int t))
{
    fill(L, 1);
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

int mt_lua__fill_then_pairs(lua_State *L, void (*fill)(lua_State *L, int t))
{
    fill(L, 1);
    lua_pushcfunction(L, l_raw_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ---- handlers ---- */

/*
 * Runs a handler chunk and keeps what it returns.
 * [-2, +0]: the chunk, the path (light userdata, for messages)
 */
static int l_lua_install(lua_State *L)
{
    mt_lua *lu = mt_lua_from_state(L);
    const char *path = lua_touserdata(L, 2);
    lua_settop(L, 1);
    lua_call(L, 0, 1); /* 1: the returned value */
    if (lua_type(L, 1) == LUA_TTABLE) {
        lua_pushliteral(L, "handle");
        if (lua_rawget(L, 1) != LUA_TFUNCTION) {
            return luaL_error(L, "%s: the returned table's 'handle' must be a function (got %s)",
                              path, luaL_typename(L, 2));
        }
    } else if (lua_type(L, 1) == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
    } else {
        return luaL_error(L,
                          "%s: a handler must return a function or a table with a 'handle' "
                          "function (got %s)",
                          path, luaL_typename(L, 1));
    }
    int handle = luaL_ref(L, LUA_REGISTRYINDEX);
    int module = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_unref(L, LUA_REGISTRYINDEX, lu->handle_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, lu->module_ref);
    lu->handle_ref = handle;
    lu->module_ref = module;
    return 0;
}

/*
 * The message of a failed load of 'path'. Lua's errors name their place
 * ("handlers/x.lua:3: boom"); a breach of the budget or the memory limit
 * does not, so it gets the innermost Lua line of 'trace' ("\tFILE:LINE: in
 * ...") and the file being loaded: "handlers/x.lua:3: instruction budget
 * of 100 exceeded while loading handlers/x.lua".
 */
static void load_error(const char *path, const char *msg, const char *trace, char *err,
                       size_t errlen)
{
    if (strncmp(msg, path, strlen(path)) == 0 || (strncmp(msg, "instruction budget", 18) != 0 &&
                                                  strncmp(msg, "memory limit", 12) != 0)) {
        snprintf(err, errlen, "%s", msg);
        return;
    }
    const char *line = strchr(trace, '\n');
    while (line && (strncmp(line, "\n\t[C]", 5) == 0 || strncmp(line, "\n\t(", 3) == 0)) {
        line = strchr(line + 1, '\n');
    }
    const char *end = line ? strstr(line, ": in ") : NULL;
    const char *eol = line ? strchr(line + 1, '\n') : NULL;
    if (end && (!eol || end < eol)) {
        snprintf(err, errlen, "%.*s: %s while loading %s", (int) (end - line - 2), line + 2, msg,
                 path);
    } else {
        snprintf(err, errlen, "%s: %s while loading it", path, msg);
    }
}

mt_err mt_lua_load_file(mt_lua *lu, const char *path, char *err, size_t errlen)
{
    return mt_lua_load_source(lu, path, NULL, 0, err, errlen);
}

mt_err mt_lua_load_source(mt_lua *lu, const char *path, const char *src, size_t len, char *err,
                          size_t errlen)
{
    mt_assert(lu && path);
    if (errlen) {
        err[0] = 0;
    }
    lua_State *L = lu->L;
    int top = lua_gettop(L);
    mt_err rc = compile_file(lu, path, src, len, err, errlen);
    if (rc) {
        return rc;
    }
    if (!lua_checkstack(L, 2)) {
        lua_settop(L, top);
        snprintf(err, errlen, "%s: Lua stack exhausted", path);
        return MT_ELUA;
    }
    lua_pushcfunction(L, l_lua_install);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, (void *) path);
    mt_buf msg, trace;
    mt_buf_init(&msg);
    mt_buf_init(&trace);
    rc = mt_lua_call(lu, 2, 0, &msg, &trace);
    if (rc) {
        load_error(path, mt_buf_cstr(&msg), mt_buf_cstr(&trace), err, errlen);
    }
    mt_buf_free(&msg);
    mt_buf_free(&trace);
    mt_assert(lua_gettop(L) == top);
    return rc;
}

mt_err mt_lua_check_file(const char *path, char *err, size_t errlen)
{
    mt_assert(path);
    if (errlen) {
        err[0] = 0;
    }
    mt_lua *lu;
    mt_err rc = mt_lua_new(NULL, &lu);
    if (rc) {
        snprintf(err, errlen, "%s: cannot create a Lua state: %s", path, mt_err_str(rc));
        return rc;
    }
    rc = compile_file(lu, path, NULL, 0, err, errlen);
    if (rc == MT_OK) {
        lua_pop(lu->L, 1);
    }
    mt_lua_free(lu);
    return rc;
}

mt_err mt_lua_push_handler(mt_lua *lu)
{
    if (lu->handle_ref == LUA_NOREF) {
        return MT_ENOTFOUND;
    }
    if (!lua_checkstack(lu->L, 1)) {
        return MT_ENOMEM;
    }
    lua_rawgeti(lu->L, LUA_REGISTRYINDEX, lu->handle_ref);
    return MT_OK;
}

/*
 * Pushes the raw field 'name' of the table at 'idx' (nil if absent) and
 * returns its type. Walks with lua_next, which never allocates, so this
 * cannot raise outside a protected call the way pushing a key string could.
 */
static int push_raw_field(lua_State *L, int idx, const char *name)
{
    size_t nlen = strlen(name);
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);
            if (klen == nlen && memcmp(k, name, nlen) == 0) {
                lua_remove(L, -2);
                return lua_type(L, -1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    return LUA_TNIL;
}

int mt_lua_push_field(mt_lua *lu, const char *name)
{
    lua_State *L = lu->L;
    if (!lua_checkstack(L, 4)) {
        return LUA_TNONE;
    }
    if (lu->module_ref == LUA_NOREF) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, lu->module_ref);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
        return LUA_TNIL;
    }
    int t = push_raw_field(L, -1, name);
    lua_remove(L, -2);
    return t;
}

bool mt_lua_has_field(mt_lua *lu, const char *name)
{
    int t = mt_lua_push_field(lu, name);
    if (t == LUA_TNONE) {
        return false;
    }
    lua_pop(lu->L, 1);
    return t != LUA_TNIL;
}

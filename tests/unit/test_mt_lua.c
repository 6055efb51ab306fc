/*
 * test_mt_lua.c - the handler sandbox: what handlers cannot reach, the
 * instruction budget and memory limit (and that a state survives them),
 * loading and its messages, require, and JSON fidelity both ways.
 */
#include "mt_test.h"
#include <lauxlib.h>
#include <sys/stat.h>
#include "mt_lua.h"
#include "mt_lua_handler.h"
#include "mt_topo.h"

#define MIB ((size_t) 1 << 20)

/* $MT_SRCDIR/tests/lua/NAME (caller frees). */
static char *fixture(const char *name)
{
    const char *src = getenv("MT_SRCDIR");
    if (!src || !*src) {
        src = ".";
    }
    char *path = malloc(strlen(src) + strlen(name) + 32);
    assert_non_null(path);
    sprintf(path, "%s/tests/lua/%s", src, name);
    return path;
}

typedef struct logged {
    int count;
    mt_diag_level level;
    char last[256];
} logged;

static void capture_log(void *arg, mt_diag_level level, const char *msg)
{
    logged *l = arg;
    l->count++;
    l->level = level;
    snprintf(l->last, sizeof l->last, "%s", msg);
}

/* A state whose require() searches tests/lua/lib and, if given, 'extra'. */
static mt_lua *new_lua_with(size_t mem, uint64_t budget, const char *extra, logged *log)
{
    char *lib = fixture("lib");
    const char *paths[2] = {lib, extra};
    mt_lua_opts o = {
        .mem_limit = mem,
        .budget = budget,
        .paths = paths,
        .npaths = extra ? 2 : 1,
        .log = log ? capture_log : NULL,
        .log_arg = log,
    };
    mt_lua *lu = NULL;
    assert_int_equal(mt_lua_new(&o, &lu), MT_OK);
    assert_non_null(lu);
    free(lib);
    return lu;
}

static mt_lua *new_lua(void)
{
    return new_lua_with(16 * MIB, 1000000, NULL, NULL);
}

/*
 * Compiles 'code' and calls it through mt_lua_call with one result left on
 * the stack on success. The message (if any) goes to *err (caller frees).
 */
static mt_err run(mt_lua *lu, const char *code, mt_buf *err)
{
    lua_State *L = mt_lua_state(lu);
    int st = luaL_loadbufferx(L, code, strlen(code), "=test", "t");
    if (st != LUA_OK) {
        print_error("compile: %s\n", lua_tostring(L, -1));
        fail();
    }
    return mt_lua_call(lu, 0, 1, err, NULL);
}

/* Runs 'code', which must succeed and return true. */
static void expect_true(mt_lua *lu, const char *code)
{
    lua_State *L = mt_lua_state(lu);
    mt_buf err;
    mt_buf_init(&err);
    mt_err rc = run(lu, code, &err);
    if (rc != MT_OK || !lua_toboolean(L, -1)) {
        print_error("code: %s\nrc %s: %s\n", code, mt_err_str(rc), mt_buf_cstr(&err));
        fail();
    }
    lua_pop(L, 1);
    mt_buf_free(&err);
    assert_int_equal(lua_gettop(L), 0);
}

/* Runs 'code', which must fail with exactly 'want'. */
static void expect_error(mt_lua *lu, const char *code, const char *want)
{
    mt_buf err;
    mt_buf_init(&err);
    mt_err rc = run(lu, code, &err);
    if (rc != MT_ELUA || strcmp(mt_buf_cstr(&err), want) != 0) {
        print_error("code: %s\nrc %s: '%s' (want '%s')\n", code, mt_err_str(rc), mt_buf_cstr(&err),
                    want);
        fail();
    }
    mt_buf_free(&err);
    assert_int_equal(lua_gettop(mt_lua_state(lu)), 0);
}

/* Loads fixture NAME into 'lu'; must succeed. */
static void load_fixture(mt_lua *lu, const char *name)
{
    char *path = fixture(name);
    char err[512];
    mt_err rc = mt_lua_load_file(lu, path, err, sizeof err);
    if (rc) {
        print_error("load %s: %s: %s\n", name, mt_err_str(rc), err);
        fail();
    }
    free(path);
}

/* Calls the loaded handler with one string argument (or nil); the result stays on the stack. */
static mt_err call_handler(mt_lua *lu, const char *arg, mt_buf *err, mt_buf *tb)
{
    lua_State *L = mt_lua_state(lu);
    assert_int_equal(mt_lua_push_handler(lu), MT_OK);
    if (arg) {
        lua_pushstring(L, arg);
    } else {
        lua_pushnil(L);
    }
    return mt_lua_call(lu, 1, 1, err, tb);
}

/* ---- sandbox ---- */

static void test_lua_sandbox_hides_unsafe_libraries(void **state)
{
    (void) state;
    static const char *const checks[] = {
        "return io == nil and os == nil and package == nil and debug == nil",
        "return coroutine == nil",
        "return dofile == nil and loadfile == nil and collectgarbage == nil and warn == nil",
        "return string.dump == nil and getmetatable('').__index.dump == nil",
        "return math.random == nil and math.randomseed == nil",
        "return not pcall(function() return os.execute('true') end)",
        "return not pcall(function() return package.loadlib('libc.so.6', 'system') end)",
        "return not pcall(function() return io.open('/etc/passwd') end)",
        "return type(string.format) == 'function' and type(table.concat) == 'function'"
        " and type(utf8.char) == 'function' and math.maxinteger == 9223372036854775807",
        "return ('x'):rep(3) == 'xxx' and select('#', 1, 2) == 2",
    };
    mt_lua *lu = new_lua();
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        expect_true(lu, checks[i]);
    }
    mt_lua_free(lu);
}

static void test_lua_load_accepts_text_only(void **state)
{
    (void) state;
    static const char *const checks[] = {
        "local f, err = load('return 1', 'x', 'b')"
        " return f == nil and err:find('only text chunks') ~= nil",
        "local f, err = load('return 1', 'x', 'bt')"
        " return f == nil and err:find('only text chunks') ~= nil",
        "local f, err = load('\\27Lua\\x54\\0\\x19\\x93', 'x')"
        " return f == nil and err:find('binary chunk') ~= nil",
        "local f, err = load('\\27Lua\\x54\\0', 'x', 't')"
        " return f == nil and err:find('binary chunk') ~= nil",
        "return load('return 1 + 1')() == 2",
        "load('made_by_load = 7')() return made_by_load == 7",
        "local f = load('return y', 'x', 't', { y = 5 }) return f() == 5",
        "local parts = { 'return ', '40 + 2' } local i = 0"
        " return load(function() i = i + 1 return parts[i] end)() == 42",
    };
    mt_lua *lu = new_lua();
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        expect_true(lu, checks[i]);
    }
    mt_lua_free(lu);
}

static void test_lua_setmetatable_refuses_finalizers(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    expect_true(lu, "local ok, err = pcall(setmetatable, {}, { __gc = function() end })"
                    " return not ok and err:find('__gc metamethods are not allowed') ~= nil");
    expect_true(lu, "local t = setmetatable({}, { __index = function() return 1 end })"
                    " return t.anything == 1");
    mt_lua_free(lu);
}

static void test_lua_globals_are_private_to_a_state(void **state)
{
    (void) state;
    mt_lua *a = new_lua();
    mt_lua *b = new_lua();
    expect_true(a, "shared_name = 1 string.injected = true return shared_name == 1");
    expect_true(b, "return shared_name == nil and string.injected == nil");
    mt_lua_free(a);
    mt_lua_free(b);
}

static void test_lua_print_goes_to_the_log_callback(void **state)
{
    (void) state;
    logged log = {0};
    mt_lua *lu = new_lua_with(16 * MIB, 1000000, NULL, &log);
    expect_true(lu, "print('a', 1, nil, true, 1.5) return true");
    assert_int_equal(log.count, 1);
    assert_int_equal(log.level, MT_DIAG_INFO);
    assert_string_equal(log.last, "a\t1\tnil\ttrue\t1.5");
    mt_lua_free(lu);

    lu = new_lua(); /* no callback: dropped */
    expect_true(lu, "print('nobody listens') return true");
    mt_lua_free(lu);
}

/* ---- the instruction budget ---- */

static void test_lua_budget_stops_an_infinite_loop_and_the_state_serves_on(void **state)
{
    (void) state;
    mt_lua *lu = new_lua_with(16 * MIB, 100000, NULL, NULL);
    lua_State *L = mt_lua_state(lu);
    load_fixture(lu, "loop_forever.lua");
    mt_buf err, tb;
    mt_buf_init(&err);
    mt_buf_init(&tb);
    assert_int_equal(call_handler(lu, NULL, &err, &tb), MT_ELUA);
    assert_string_equal(mt_buf_cstr(&err), "instruction budget of 100000 exceeded");
    assert_non_null(strstr(mt_buf_cstr(&tb), "stack traceback:"));
    assert_non_null(strstr(mt_buf_cstr(&tb), "loop_forever.lua:"));
    assert_int_equal(lua_gettop(L), 0);

    assert_int_equal(call_handler(lu, "stop", &err, &tb), MT_OK);
    assert_string_equal(lua_tostring(L, -1), "stopped");
    lua_pop(L, 1);
    expect_true(lu, "return 1 + 1 == 2");
    mt_buf_free(&err);
    mt_buf_free(&tb);
    mt_lua_free(lu);
}

static void test_lua_budget_cannot_be_swallowed_by_pcall(void **state)
{
    (void) state;
    mt_lua *lu = new_lua_with(16 * MIB, 50000, NULL, NULL);
    load_fixture(lu, "pcall_swallow.lua");
    mt_buf err;
    mt_buf_init(&err);
    assert_int_equal(call_handler(lu, NULL, &err, NULL), MT_ELUA);
    assert_string_equal(mt_buf_cstr(&err), "instruction budget of 50000 exceeded");
    assert_int_equal(lua_gettop(mt_lua_state(lu)), 0);
    expect_error(lu, "while true do pcall(error, 'x') end", "instruction budget of 50000 exceeded");
    expect_error(lu,
                 "xpcall(function() while true do end end, function(e) return e end)"
                 " return 'survived'",
                 "instruction budget of 50000 exceeded");
    expect_true(lu, "return true");
    mt_buf_free(&err);
    mt_lua_free(lu);
}

static void test_lua_budget_is_per_call(void **state)
{
    (void) state;
    mt_lua *lu = new_lua_with(16 * MIB, 100000, NULL, NULL);
    lua_State *L = mt_lua_state(lu);
    load_fixture(lu, "busy.lua");
    for (int i = 0; i < 5; i++) {
        assert_int_equal(mt_lua_push_handler(lu), MT_OK);
        lua_pushinteger(L, 30000); /* most of the budget: five calls need five budgets */
        assert_int_equal(mt_lua_call(lu, 1, 1, NULL, NULL), MT_OK);
        assert_int_equal(lua_tointeger(L, -1), 450015000);
        lua_pop(L, 1);
    }
    mt_lua_free(lu);
}

/* ---- the memory limit ---- */

static void test_lua_memory_limit_stops_a_bomb_and_the_state_serves_on(void **state)
{
    (void) state;
    static const char *const kinds[] = {"string",    "table",      "rep",
                                        "caught",    "swallowed",  "xswallowed",
                                        "string"};
    mt_lua *lu = new_lua_with(4 * MIB, 100000000, NULL, NULL);
    lua_State *L = mt_lua_state(lu);
    load_fixture(lu, "memory_bomb.lua");
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        mt_buf err, tb;
        mt_buf_init(&err);
        mt_buf_init(&tb);
        assert_int_equal(call_handler(lu, kinds[i], &err, &tb), MT_ELUA);
        if (strcmp(mt_buf_cstr(&err), "memory limit of 4194304 bytes exceeded") != 0) {
            print_error("kind %s: %s\n", kinds[i], mt_buf_cstr(&err));
            fail();
        }
        /* Where it ran out, as for any other error (Lua calls no message handler for it). */
        if (!strstr(mt_buf_cstr(&tb), "stack traceback:") ||
            !strstr(mt_buf_cstr(&tb), "memory_bomb.lua:")) {
            print_error("kind %s: traceback '%s'\n", kinds[i], mt_buf_cstr(&tb));
            fail();
        }
        if (strcmp(kinds[i], "string") == 0) {
            assert_non_null(strstr(mt_buf_cstr(&tb), "memory_bomb.lua:6:"));
        }
        if (strcmp(kinds[i], "rep") == 0) {
            assert_non_null(strstr(mt_buf_cstr(&tb), "[C]: in field 'rep'"));
        }
        mt_buf_free(&err);
        mt_buf_free(&tb);
        assert_int_equal(lua_gettop(L), 0);
        assert_int_equal(call_handler(lu, "none", NULL, NULL), MT_OK);
        assert_string_equal(lua_tostring(L, -1), "ok");
        lua_pop(L, 1);
    }
    mt_buf err;
    mt_buf_init(&err);
    if (call_handler(lu, "pcall", &err, NULL) != MT_OK) {
        print_error("pcall: %s\n", mt_buf_cstr(&err));
        fail();
    }
    mt_buf_free(&err);
    mt_lua_free(lu);
}

static void test_lua_new_refuses_a_limit_too_small_for_the_sandbox(void **state)
{
    (void) state;
    mt_lua_opts o = {.mem_limit = 4096};
    mt_lua *lu = (mt_lua *) &o;
    assert_int_equal(mt_lua_new(&o, &lu), MT_ENOMEM);
    assert_null(lu);
    const char *bad[] = {"lib", NULL};
    mt_lua_opts p = {.paths = bad, .npaths = 2};
    assert_int_equal(mt_lua_new(&p, &lu), MT_EINVAL);
    assert_null(lu);
    assert_int_equal(mt_lua_new(NULL, &lu), MT_OK);
    mt_lua_free(lu);
    mt_lua_free(NULL);
}

/* ---- errors raised by handlers ---- */

static void test_lua_table_error_reads_as_json(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    load_fixture(lu, "raise_table.lua");
    mt_buf err, tb;
    mt_buf_init(&err);
    mt_buf_init(&tb);
    assert_int_equal(call_handler(lu, NULL, &err, &tb), MT_ELUA);
    assert_string_equal(mt_buf_cstr(&err),
                        "{\"code\":\"E_STOCK\",\"message\":\"out of stock\",\"sku\":42}");
    assert_non_null(strstr(mt_buf_cstr(&tb), "raise_table.lua:3"));
    mt_buf_free(&err);
    mt_buf_free(&tb);

    load_fixture(lu, "raise_tostring.lua");
    mt_buf_init(&err);
    assert_int_equal(call_handler(lu, NULL, &err, NULL), MT_ELUA);
    assert_string_equal(mt_buf_cstr(&err), "custom: E1");
    mt_buf_free(&err);

    expect_error(lu, "error({ f = print })", "(error object is a table value)");
    expect_error(lu, "error(require('moontide.json').null)", "null");

    /* a large table is cut, never inside a UTF-8 sequence */
    mt_buf_init(&err);
    assert_int_equal(run(lu, "error({ big = string.rep('\\u{e9}', 2000) })", &err), MT_ELUA);
    const char *m = mt_buf_cstr(&err);
    assert_true(err.len <= 1024 && err.len > 1000);
    assert_memory_equal(m, "{\"big\":\"\xc3\xa9", 10);
    assert_string_equal(m + err.len - 5, "\xc3\xa9...");
    mt_buf_free(&err);

    expect_error(lu, "error()", "(error object is a nil value)");
    expect_error(lu, "error(42)", "42");
    expect_error(lu, "error('plain', 0)", "plain");
    expect_error(lu, "local x = nil; return x.field",
                 "test:1: attempt to index a nil value (local 'x')");
    mt_lua_free(lu);
}

/* ---- loading handlers ---- */

static void test_lua_syntax_error_reads_file_line_message(void **state)
{
    (void) state;
    char *path = fixture("syntax_error.lua");
    char want[600], err[512];
    snprintf(want, sizeof want, "%s:3: '=' expected near 'x'", path);
    mt_lua *lu = new_lua();
    assert_int_equal(mt_lua_load_file(lu, path, err, sizeof err), MT_ELUA);
    assert_string_equal(err, want);
    assert_int_equal(mt_lua_push_handler(lu), MT_ENOTFOUND);
    assert_int_equal(lua_gettop(mt_lua_state(lu)), 0);
    mt_lua_free(lu);

    assert_int_equal(mt_lua_check_file(path, err, sizeof err), MT_ELUA);
    assert_string_equal(err, want);
    free(path);
}

static void test_lua_syntax_error_keeps_a_long_path_whole(void **state)
{
    char *dir = *state;
    char sub[1024];
    snprintf(sub, sizeof sub, "%s/a-rather-long-directory-name-for-handlers", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    char *path =
        mt_test_write_file(sub, "another-long-handler-file-name.lua", "-- line 1\nx = = 1\n");
    assert_true(strlen(path) > LUA_IDSIZE);
    char want[1200], err[1200];
    snprintf(want, sizeof want, "%s:2: unexpected symbol near '='", path);
    assert_int_equal(mt_lua_check_file(path, err, sizeof err), MT_ELUA);
    assert_string_equal(err, want);
    free(path);
}

static void test_lua_check_file_compiles_without_running(void **state)
{
    (void) state;
    char err[512];
    char *path = fixture("loop_forever.lua");
    assert_int_equal(mt_lua_check_file(path, err, sizeof err), MT_OK);
    assert_string_equal(err, "");
    free(path);
    path = fixture("error_at_load.lua");
    assert_int_equal(mt_lua_check_file(path, err, sizeof err), MT_OK);
    free(path);
    path = fixture("no_such_handler.lua");
    assert_int_equal(mt_lua_check_file(path, err, sizeof err), MT_ENOTFOUND);
    assert_non_null(strstr(err, "no_such_handler.lua"));
    free(path);
}

/* A budget or memory breach while a file loads names the file and the line. */
static void test_lua_limits_breached_while_loading_name_the_file(void **state)
{
    char *dir = *state;
    char *loop = mt_test_write_file(dir, "spins.lua", "local n = 0\nwhile true do\n"
                                    "  n = n + 1\nend\n");
    char *mod = mt_test_write_file(dir, "hog.lua", "local t = {}\n"
                                   "for i = 1, 1e9 do t[i] = ('x'):rep(64) .. i end\n");
    char *user = mt_test_write_file(dir, "user.lua", "require('hog')\nreturn function() end\n");
    mt_lua *lu = new_lua_with(2 * MIB, 100000, dir, NULL);
    char err[512], want[1200];
    assert_int_equal(mt_lua_load_file(lu, loop, err, sizeof err), MT_ELUA);
    snprintf(want, sizeof want, "%s:3: instruction budget of 100000 exceeded while loading %s",
             loop, loop);
    assert_string_equal(err, want);
    mt_lua_free(lu);
    lu = new_lua_with(2 * MIB, 100000000, dir, NULL);
    assert_int_equal(mt_lua_load_file(lu, user, err, sizeof err), MT_ELUA);
    snprintf(want, sizeof want, "%s:2: memory limit of %zu bytes exceeded while loading %s", mod,
             (size_t) (2 * MIB), user);
    assert_string_equal(err, want);
    mt_lua_free(lu);
    free(loop);
    free(mod);
    free(user);
}

static void test_lua_binary_handler_file_is_refused(void **state)
{
    char *dir = *state;
    char *path = mt_test_write_file(dir, "compiled.lua", "\033Lua\x54\x00 not really bytecode");
    char err[512], want[600];
    snprintf(want, sizeof want, "%s: attempt to load a binary chunk (mode is 't')", path);
    mt_lua *lu = new_lua();
    assert_int_equal(mt_lua_load_file(lu, path, err, sizeof err), MT_ELUA);
    assert_string_equal(err, want);
    mt_lua_free(lu);
    free(path);
}

static void test_lua_handler_file_must_return_a_handler(void **state)
{
    (void) state;
    static const struct {
        const char *file;
        const char *want; /* the message after "PATH: " */
    } cases[] = {
        {"returns_number.lua",
         "a handler must return a function or a table with a 'handle' function (got number)"},
        {"table_without_handle.lua", "the returned table's 'handle' must be a function (got nil)"},
    };
    mt_lua *lu = new_lua();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *path = fixture(cases[i].file);
        char err[512], want[700];
        snprintf(want, sizeof want, "%s: %s", path, cases[i].want);
        assert_int_equal(mt_lua_load_file(lu, path, err, sizeof err), MT_ELUA);
        assert_string_equal(err, want);
        free(path);
    }
    char *path = fixture("error_at_load.lua");
    char err[512], want[600];
    snprintf(want, sizeof want, "%s:2: cannot start", path);
    assert_int_equal(mt_lua_load_file(lu, path, err, sizeof err), MT_ELUA);
    assert_string_equal(err, want);
    free(path);
    path = fixture("missing.lua");
    assert_int_equal(mt_lua_load_file(lu, path, err, sizeof err), MT_ENOTFOUND);
    free(path);
    assert_int_equal(mt_lua_push_handler(lu), MT_ENOTFOUND);
    assert_false(mt_lua_has_field(lu, "handle"));
    assert_int_equal(lua_gettop(mt_lua_state(lu)), 0);
    mt_lua_free(lu);
}

static void test_lua_table_handler_keeps_its_fields(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    lua_State *L = mt_lua_state(lu);
    load_fixture(lu, "returns_table.lua");
    assert_true(mt_lua_has_field(lu, "handle"));
    assert_true(mt_lua_has_field(lu, "project"));
    assert_true(mt_lua_has_field(lu, "name"));
    assert_false(mt_lua_has_field(lu, "saga"));
    assert_int_equal(mt_lua_push_field(lu, "name"), LUA_TSTRING);
    assert_string_equal(lua_tostring(L, -1), "counter");
    lua_pop(L, 1);
    assert_int_equal(mt_lua_push_field(lu, "project"), LUA_TFUNCTION);
    lua_pop(L, 1);
    assert_int_equal(mt_lua_push_field(lu, "absent"), LUA_TNIL);
    lua_pop(L, 1);

    assert_int_equal(mt_lua_push_handler(lu), MT_OK);
    assert_int_equal(mt_lua_push_json_text(L, "{\"n\":41}", 8, NULL, 0), MT_OK);
    assert_int_equal(mt_lua_call(lu, 1, 1, NULL, NULL), MT_OK);
    assert_int_equal(lua_tointeger(L, -1), 42);
    lua_pop(L, 1);

    /* a function handler replaces the table; it has no fields */
    load_fixture(lu, "loop_forever.lua");
    assert_false(mt_lua_has_field(lu, "handle"));
    assert_false(mt_lua_has_field(lu, "project"));
    assert_int_equal(lua_gettop(L), 0);
    mt_lua_free(lu);
}

/* ---- require ---- */

static void test_lua_require_finds_modules_in_configured_paths(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    lua_State *L = mt_lua_state(lu);
    load_fixture(lu, "uses_require.lua");
    assert_int_equal(call_handler(lu, "ada", NULL, NULL), MT_OK);
    assert_string_equal(lua_tostring(L, -1), "hello ADA");
    lua_pop(L, 1);
    expect_true(lu, "return require('greeting') == require('greeting')");
    expect_true(lu, "return require('util.strings').upper('x') == 'X'");
    expect_true(lu, "return require('moontide.json').null ~= nil");
    mt_lua_free(lu);
}

static void test_lua_require_refuses_everything_else(void **state)
{
    char *dir = *state;
    char *outside = mt_test_write_file(dir, "outside.lua", "return { reached = true }\n");
    mt_lua *lu = new_lua();
    static const char *const checks[] = {
        "local ok, err = pcall(require, 'outside')"
        " return not ok and err:find(\"module 'outside' not found\") ~= nil",
        "local ok, err = pcall(require, '../x')"
        " return not ok and err:find('invalid module name') ~= nil",
        "local ok, err = pcall(require, '..lib.greeting')"
        " return not ok and err:find('invalid module name') ~= nil",
        "local ok, err = pcall(require, 'util/strings')"
        " return not ok and err:find('invalid module name') ~= nil",
        "local ok, err = pcall(require, '/etc/passwd')"
        " return not ok and err:find('invalid module name') ~= nil",
        "local ok, err = pcall(require, 'greeting.')"
        " return not ok and err:find('invalid module name') ~= nil",
        "local ok, err = pcall(require, 'os') return not ok and err:find('not found') ~= nil",
        "local ok, err = pcall(require, 'loop_a')"
        " return not ok and err:find(\"module 'loop_a' requires itself\") ~= nil",
        "local ok = pcall(require, 'flaky') local m = require('flaky')"
        " return not ok and m.attempts == 2",
    };
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        expect_true(lu, checks[i]);
    }
    mt_lua_free(lu);

    /* the same module is found once its directory is configured */
    lu = new_lua_with(16 * MIB, 1000000, dir, NULL);
    expect_true(lu, "return require('outside').reached");
    mt_lua_free(lu);
    free(outside);
}

/* ---- JSON ---- */

/* JSON that must come back equal (json_equal) through Lua, both bridges. */
static const char *const json_fidelity[] = {
    "9223372036854775807",
    "-9223372036854775808",
    "0",
    "-0",
    "7",
    "-123",
    "123456789012345678",
    "-999999999999999999",
    "1234567890123456789",
    "1.5",
    "1e300",
    "-2.5e-300",
    "2.0",
    "0.1",
    "true",
    "false",
    "null",
    "\"\"",
    "[]",
    "{}",
    "[null]",
    "[1,null,3]",
    "{\"a\":null}",
    "{\"a\":[],\"b\":{}}",
    "[[[]],[{}]]",
    "{\"nested\":{\"deep\":[1,[2,[3,{\"x\":\"y\",\"z\":[null,{}]}]]]}}",
    "\"h\\u00e9llo \\u2713 \\ud834\\udd1e\"",
    "\"nul\\u0000byte\"",
    "{\"caf\\u00e9\":\"\\u65e5\\u672c\\u8a9e\",\"\":\"empty key\"}",
    "[9223372036854775807,-9223372036854775808,0.1,-0.0,1e-7]",
    "{\"i\":1,\"f\":1.0,\"s\":\"1\",\"b\":true,\"n\":null}",
};

static void test_lua_json_round_trips_exactly(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    lua_State *L = mt_lua_state(lu);
    for (size_t i = 0; i < sizeof json_fidelity / sizeof *json_fidelity; i++) {
        const char *text = json_fidelity[i];
        json_error_t je;
        json_t *want = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        assert_non_null(want);
        char err[320];

        assert_int_equal(mt_lua_push_json(L, want), MT_OK);
        json_t *got = NULL;
        assert_int_equal(mt_lua_to_json(L, -1, &got, NULL, err, sizeof err), MT_OK);
        lua_pop(L, 1);
        if (!json_equal(want, got)) {
            char *g = json_dumps(got, JSON_ENCODE_ANY);
            print_error("%s came back as %s\n", text, g);
            free(g);
            fail();
        }
        json_decref(got);

        assert_int_equal(mt_lua_push_json_text(L, text, strlen(text), err, sizeof err), MT_OK);
        assert_int_equal(mt_lua_to_json(L, -1, &got, NULL, err, sizeof err), MT_OK);
        lua_pop(L, 1);
        assert_true(json_equal(want, got));
        json_decref(got);

        /* and through json.decode, then json.encode, inside Lua */
        assert_int_equal(run(lu, "return require('moontide.json')", NULL), MT_OK);
        lua_getfield(L, -1, "encode");
        lua_getfield(L, -2, "decode");
        lua_pushlstring(L, text, strlen(text));
        assert_int_equal(mt_lua_call(lu, 1, 1, NULL, NULL), MT_OK);
        assert_int_equal(mt_lua_call(lu, 1, 1, NULL, NULL), MT_OK);
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        got = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        assert_non_null(got);
        assert_true(json_equal(want, got));
        json_decref(got);
        lua_pop(L, 2);
        json_decref(want);
        assert_int_equal(lua_gettop(L), 0);
    }
    mt_lua_free(lu);
}

static void test_lua_json_types_in_lua(void **state)
{
    (void) state;
    static const char *const checks[] = {
        "return math.type(json.decode('9223372036854775807')) == 'integer'"
        " and json.decode('9223372036854775807') == math.maxinteger",
        "return json.decode('-9223372036854775808') == math.mininteger",
        "return math.type(json.decode('2.0')) == 'float' and json.encode(2.0) == '2.0'",
        /* the fewest digits that read back exactly (17 wrote 0.10000000000000001) */
        "return json.encode(0.1) == '0.1' and json.encode({ 0.1, 1.5 }) == '[0.1,1.5]'",
        "return json.encode(0.1 + 0.2) == '0.30000000000000004'"
        " and json.decode(json.encode(0.1 + 0.2)) == 0.1 + 0.2",
        /* one precision for the whole text: the most any of its reals needs */
        "return json.encode({ a = 0.1, b = 1 / 3 }) == '{\"a\":0.1,\"b\":0.3333333333333333}'"
        " and json.encode({ 0.1, 0.1 + 0.2 }) == '[0.10000000000000001,0.30000000000000004]'"
        " and json.encode(1e300) == '1e300'",
        "return json.decode('[null]')[1] == json.null and #json.decode('[null, null]') == 2",
        "return json.decode('{\"a\":null}').a == json.null",
        "return tostring(json.null) == 'null'",
        "return json.encode({}) == '{}' and json.encode(json.array()) == '[]'"
        " and json.encode(json.object()) == '{}'",
        "return json.encode(json.decode('[]')) == '[]' and json.encode(json.decode('{}')) == '{}'",
        "return json.encode({ 1, 2, 3 }) == '[1,2,3]'",
        "return json.encode({ b = 1, a = { c = json.null }, [\"\"] = 0 })"
        " == '{\"\":0,\"a\":{\"c\":null},\"b\":1}'",
        "return json.encode(json.decode('{\"b\":1,\"a\":[]}')) == '{\"a\":[],\"b\":1}'",
        "return json.encode(1.5) == '1.5' and json.encode('x') == '\"x\"'"
        " and json.encode(true) == 'true' and json.encode(nil) == 'null'",
        "return json.encode('caf\\u{e9}') == '\"caf\\u{e9}\"'",
        "local v, err = json.decode('{bad') return v == nil and err:find('line 1') ~= nil",
        "local v, err = json.decode('18446744073709551616')"
        " return v == nil and err:find('too big') ~= nil",
        "local ok, err = pcall(json.encode, { f = print })"
        " return not ok and err:find('moontide.json.encode: $.f: cannot encode a function"
        " value', 1, true) ~= nil",
        "local ok, err = pcall(json.encode, json.object(json.array({ 1 })))"
        " return not ok and err:find('$: object has the non-string key 1', 1, true) ~= nil",
        "return not pcall(json.array, setmetatable({}, {}))",
        "local t = json.object({}) return json.encode(json.array(t)) == '[]'",
    };
    mt_lua *lu = new_lua();
    expect_true(lu, "json = require('moontide.json') return true");
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        expect_true(lu, checks[i]);
    }
    mt_lua_free(lu);
}

static void test_lua_to_json_refuses_what_json_cannot_hold(void **state)
{
    (void) state;
    static const struct {
        const char *code;
        const char *want;
    } cases[] = {
        {"return { 1, nil, 3 }", "$: sparse array: key 3 in a table of 2 keys"},
        {"return { a = { [1] = 1, [5] = 5 } }", "$.a: sparse array: key 5 in a table of 2 keys"},
        {"return { [0] = 'zero' }", "$: sparse array: key 0 in a table of 1 keys"},
        {"return { f = function() end }", "$.f: cannot encode a function value"},
        {"return { list = { 1, 2, print } }", "$.list[3]: cannot encode a function value"},
        {"return { x = 0/0 }", "$.x: cannot encode NaN"},
        {"return { x = -math.huge }", "$.x: cannot encode -inf"},
        {"local t = {} t.self = t return t", "$.self: cycle: the table contains itself"},
        {"local t = { {} } t[1][1] = t return { t }",
         "$[1][1][1]: cycle: the table contains itself"},
        {"return { 1, a = 2 }", "$: table mixes array index 1 and string key 'a'"},
        {"return { [1.5] = true }", "$: key 1.5 is neither a string nor an array index"},
        {"return { [true] = 1 }", "$: key true is neither a string nor an array index"},
        {"return { [{}] = 1 }", "$: key a table is neither a string nor an array index"},
        {"local j = require('moontide.json') local t = j.array() t.x = 1 return t",
         "$: array has the string key 'x'"},
        {"return { s = '\\xff' }", "$.s: string is not valid UTF-8"},
        {"return { ['\\xff'] = 1 }", "$: object key is not valid UTF-8"},
        {"return { u = '\\u{D800}' }", "$.u: string is not valid UTF-8"},
    };
    mt_lua *lu = new_lua();
    lua_State *L = mt_lua_state(lu);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        assert_int_equal(run(lu, cases[i].code, NULL), MT_OK);
        json_t *j = (json_t *) &j;
        char err[320];
        mt_err rc = mt_lua_to_json(L, -1, &j, NULL, err, sizeof err);
        if (rc != MT_EINVAL || strcmp(err, cases[i].want) != 0) {
            print_error("%s: rc %s '%s' (want '%s')\n", cases[i].code, mt_err_str(rc), err,
                        cases[i].want);
            fail();
        }
        assert_null(j);
        assert_int_equal(lua_gettop(L), 1); /* the stack is as it was */
        lua_pop(L, 1);
    }
    mt_lua_free(lu);
}

static void test_lua_json_nesting_limit_is_128_both_ways(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    lua_State *L = mt_lua_state(lu);
    char err[320];
    json_t *j;
    assert_int_equal(run(lu, "local t = {} for i = 1, 127 do t = { t } end return t", NULL), MT_OK);
    assert_int_equal(mt_lua_to_json(L, -1, &j, NULL, err, sizeof err), MT_OK);
    json_decref(j);
    lua_pop(L, 1);
    assert_int_equal(run(lu, "local t = {} for i = 1, 128 do t = { t } end return t", NULL), MT_OK);
    assert_int_equal(mt_lua_to_json(L, -1, &j, NULL, err, sizeof err), MT_EINVAL);
    assert_non_null(strstr(err, "nesting deeper than 128 levels"));
    lua_pop(L, 1);

    char text[300];
    memset(text, '[', 128);
    memset(text + 128, ']', 128);
    assert_int_equal(mt_lua_push_json_text(L, text, 256, err, sizeof err), MT_OK);
    lua_pop(L, 1);
    memset(text, '[', 129);
    memset(text + 129, ']', 129);
    assert_int_equal(mt_lua_push_json_text(L, text, 258, err, sizeof err), MT_EINVAL);
    assert_string_equal(err, "nesting deeper than 128 levels");
    assert_int_equal(lua_gettop(L), 0);
    mt_lua_free(lu);
}

static void test_lua_push_json_text_reports_bad_input_and_memory(void **state)
{
    (void) state;
    mt_lua *lu = new_lua_with(1 * MIB, 1000000, NULL, NULL);
    lua_State *L = mt_lua_state(lu);
    char err[320];
    assert_int_equal(mt_lua_push_json_text(L, "{\"a\":", 5, err, sizeof err), MT_EINVAL);
    assert_non_null(strstr(err, "line 1 column"));
    assert_int_equal(lua_gettop(L), 0);
    /* Not JSON integers, though made of digits and '-'. */
    static const char *const not_int[] = {"00", "-", "", "01", "--1", "-01", "1-",
                                          "9223372036854775808"};
    for (size_t i = 0; i < sizeof not_int / sizeof *not_int; i++) {
        assert_int_equal(mt_lua_push_json_text(L, not_int[i], strlen(not_int[i]), err, sizeof err),
                         MT_EINVAL);
        assert_int_equal(lua_gettop(L), 0);
    }

    /* 2 MiB of strings does not fit a 1 MiB state */
    mt_buf big;
    mt_buf_init(&big);
    mt_buf_adds(&big, "[");
    for (int i = 0; i < 4096; i++) {
        mt_buf_addf(&big, "%s\"%0500d\"", i ? "," : "", i);
    }
    mt_buf_adds(&big, "]");
    assert_int_equal(mt_lua_push_json_text(L, big.data, big.len, err, sizeof err), MT_ENOMEM);
    assert_string_equal(err, "memory limit of 1048576 bytes exceeded");
    assert_int_equal(lua_gettop(L), 0);
    mt_buf_free(&big);
    expect_true(lu, "return true");
    mt_lua_free(lu);
}

static void test_lua_null_helpers(void **state)
{
    (void) state;
    mt_lua *lu = new_lua();
    lua_State *L = mt_lua_state(lu);
    mt_lua_push_null(L);
    assert_true(mt_lua_is_null(L, -1));
    json_t *j;
    assert_int_equal(mt_lua_to_json(L, -1, &j, NULL, NULL, 0), MT_OK);
    assert_true(json_is_null(j));
    json_decref(j);
    lua_pushnil(L);
    assert_false(mt_lua_is_null(L, -1));
    lua_pop(L, 2);
    mt_lua_free(lu);
}

/* Runs handler 'h' on 'ev' (attempt 2); returns the message it raised (static buffer). */
static const char *handler_said(const mt_sub_runner *r, void *h, const mt_event *ev)
{
    mt_buf error, tb;
    mt_buf_init(&error);
    mt_buf_init(&tb);
    assert_int_equal(r->invoke(h, ev, 2, NULL, &error, &tb), MT_ELUA);
    static char said[2048];
    snprintf(said, sizeof said, "%s", mt_buf_cstr(&error));
    mt_buf_free(&error);
    mt_buf_free(&tb);
    return said;
}

/*
 * Runs handler 'h' (which raises with what it saw) on an event of this
 * sequence, subject ('mode', which may be NULL) and data; returns the
 * error message (static buffer).
 */
static const char *handler_mode(const mt_sub_runner *r, void *h, uint64_t seq, const char *mode,
                                const char *data)
{
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "e";
    ev.attr[MT_ATTR_SOURCE] = "/s";
    ev.attr[MT_ATTR_TYPE] = "t.x";
    ev.attr[MT_ATTR_SUBJECT] = mode; /* NULL: none */
    ev.sequence = seq;
    ev.data_kind = MT_DATA_JSON;
    ev.data = (const uint8_t *) data;
    ev.data_len = strlen(data);
    return handler_said(r, h, &ev);
}

static const char *handler_saw(const mt_sub_runner *r, void *h, uint64_t seq, const char *data)
{
    return handler_mode(r, h, seq, NULL, data);
}

/*
 * Handlers on one thread share the parse of an event's data, kept by the
 * event's sequence: each still sees the event's own data, also when a
 * sequence comes back with other data (another store), for data too long
 * to keep, and a payload that does not parse is named as such.
 */
static void test_lua_handlers_each_see_the_events_own_data(void **state)
{
    mt_sub_conf *conf = mt_test_lua_sub(
        *state, "saw",
        "return function(event)\n"
        "  local d = event.data\n"
        "  error('saw ' .. tostring(d.a) .. ' ' .. #d.list .. ' ' .. #(d.pad or ''), 0)\n"
        "end\n");
    const mt_sub_runner *r = mt_lua_sub_runner();
    void *h1, *h2;
    char err[256];
    assert_int_equal(r->open(conf, &h1, err, sizeof err), MT_OK);
    assert_int_equal(r->open(conf, &h2, err, sizeof err), MT_OK);

    const char *one = "{\"a\":1,\"list\":[1,2]}";
    assert_string_equal(handler_saw(r, h1, 5, one), "saw 1 2 0");
    assert_string_equal(handler_saw(r, h2, 5, one), "saw 1 2 0");
    assert_string_equal(handler_saw(r, h1, 5, "{\"a\":2,\"list\":[]}"), "saw 2 0 0");
    assert_string_equal(handler_saw(r, h2, 5 + 16384, one), "saw 1 2 0"); /* same slot */
    assert_string_equal(handler_saw(r, h2, 5, "{\"a\":2,\"list\":[]}"), "saw 2 0 0");

    char big[3100];
    snprintf(big, sizeof big, "{\"a\":3,\"list\":[],\"pad\":\"%03000d\"}", 0);
    assert_string_equal(handler_saw(r, h1, 7, big), "saw 3 0 3000");
    assert_string_equal(handler_saw(r, h2, 7, big), "saw 3 0 3000");

    /* Data that can never be given to the handler: MT_EINVAL (no retries). */
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "e";
    ev.attr[MT_ATTR_SOURCE] = "/s";
    ev.attr[MT_ATTR_TYPE] = "t.x";
    ev.sequence = 8;
    ev.data_kind = MT_DATA_JSON;
    static const char *const bad[] = {"{\"a\":", NULL};
    char deep[400] = "";
    for (int i = 0; i < 150; i++) {
        strcat(deep, "[");
    }
    for (int i = 0; i < 150; i++) {
        strcat(deep, "]");
    }
    const char *want[] = {"malformed payload: line 1 column",
                          "malformed payload: nesting deeper than 128 levels"};
    for (int i = 0; i < 2; i++) {
        ev.data = (const uint8_t *) (i == 0 ? bad[0] : deep);
        ev.data_len = strlen((const char *) ev.data);
        ev.sequence = 8 + (uint64_t) i;
        mt_buf error, tb;
        mt_buf_init(&error);
        mt_buf_init(&tb);
        assert_int_equal(r->invoke(h1, &ev, 1, NULL, &error, &tb), MT_EINVAL);
        assert_non_null(strstr(mt_buf_cstr(&error), want[i]));
        mt_buf_free(&error);
        mt_buf_free(&tb);
    }
    r->close(h1);
    r->close(h2);
    mt_sub_conf_free(conf);
}

/*
 * What a handler sees in 'event': every attribute by name, pairs() and the
 * JSON encoder see all of them, assignments (also of nil) stick, a
 * handler's own metatable replaces the engine's without losing an
 * attribute, and an event kept past its run still reads as itself in later
 * runs.
 */
static void test_lua_event_table_holds_every_attribute(void **state)
{
    mt_sub_conf *conf = mt_test_lua_sub(
        *state, "ev",
        "local json = require('moontide.json')\n"
        "local names = {'specversion', 'id', 'source', 'type', 'subject', 'time',\n"
        "  'datacontenttype', 'dataschema', 'dataversion', 'correlationid', 'causationid',\n"
        "  'traceparent', 'expirytime', 'deliverafter', 'replyto', 'sequence',\n"
        "  'streamversion', 'priority', 'recordedtime', 'attempt', 'color', 'n', 'nope'}\n"
        "local kept\n"
        "local function show(e)\n"
        "  local out = {}\n"
        "  for _, k in ipairs(names) do out[#out + 1] = k .. '=' .. tostring(e[k]) end\n"
        "  out[#out + 1] = 'data.a=' .. tostring(e.data and e.data.a)\n"
        "  return table.concat(out, ' ')\n"
        "end\n"
        "return function(event, ctx)\n"
        "  local early = rawget(event, 'subject')\n"
        "  local mode = event.subject\n"
        "  if mode == 'attrs' then error(show(event), 0) end\n"
        "  if mode == 'pairs' then\n"
        "    local keys = {}\n"
        "    for k, v in pairs(event) do keys[#keys + 1] = k .. '=' .. type(v) end\n"
        "    table.sort(keys)\n"
        "    error(table.concat(keys, ' '), 0)\n"
        "  end\n"
        "  if mode == 'json' then error(json.encode(event), 0) end\n"
        "  if mode == 'next' then\n"
        "    local keys, k = {}, next(event)\n"
        "    while k ~= nil do keys[#keys + 1] = type(k) .. ':' .. tostring(k); k = next(event, k) end\n"
        "    table.sort(keys)\n"
        "    error(table.concat(keys, ' '), 0)\n"
        "  end\n"
        "  if mode == 'assign' then\n"
        "    event.id = nil; event.type = 'changed'; event.extra = true\n"
        "    local s = event.source; event.source = nil\n"
        "    error(show(event) .. ' extra=' .. tostring(event.extra) .. ' was=' .. s, 0)\n"
        "  end\n"
        "  if mode == 'meta' then\n"
        "    local before = tostring(getmetatable(event))\n"
        "    setmetatable(event, {__index = function(_, k) return 'no ' .. k end})\n"
        "    error(before .. ' ' .. event.id .. ' ' .. event.color .. ' ' .. event.nope, 0)\n"
        "  end\n"
        "  if mode == 'raw' then\n"
        "    error(tostring(early) .. ' ' .. tostring(rawget(event, 'id')), 0)\n"
        "  end\n"
        "  if mode == 'gone' then\n"
        "    event.subject = nil\n"
        "    error(tostring(event.subject) .. ' ' .. tostring(rawget(event, 'subject')), 0)\n"
        "  end\n"
        "  if mode == 'keep' then kept = event; error('kept', 0) end\n"
        "  if mode == 'kept' then error(show(kept), 0) end\n"
        "  error('unknown mode ' .. tostring(mode), 0)\n"
        "end\n");
    const mt_sub_runner *r = mt_lua_sub_runner();
    void *h;
    char err[256];
    assert_int_equal(r->open(conf, &h, err, sizeof err), MT_OK);

    char subject[16];
    mt_event ev;
    mt_event_init(&ev);
    ev.attr[MT_ATTR_ID] = "e-1";
    ev.attr[MT_ATTR_SOURCE] = "/s";
    ev.attr[MT_ATTR_TYPE] = "t.x";
    ev.attr[MT_ATTR_SUBJECT] = subject;
    ev.attr[MT_ATTR_TIME] = "2026-11-27T10:00:00Z";
    ev.attr[MT_ATTR_DATACONTENTTYPE] = "application/json";
    ev.attr[MT_ATTR_CORRELATIONID] = "c-9";
    ev.attr[MT_ATTR_EXTENSIONS] = "{\"color\":\"red\",\"n\":5}";
    ev.sequence = 42;
    ev.streamversion = 7;
    ev.priority = 3;
    ev.recordedtime_us = INT64_C(1795773600) * 1000000 + 250000;
    ev.data_kind = MT_DATA_JSON;
    ev.data = (const uint8_t *) "{\"a\":1}";
    ev.data_len = strlen((const char *) ev.data);

    const char *all = "specversion=1.0 id=e-1 source=/s type=t.x subject=%s "
                      "time=2026-11-27T10:00:00Z datacontenttype=application/json "
                      "dataschema=nil dataversion=nil correlationid=c-9 causationid=nil "
                      "traceparent=nil expirytime=nil deliverafter=nil replyto=nil sequence=42 "
                      "streamversion=7 priority=3 recordedtime=2026-11-27T10:00:00.250000Z "
                      "attempt=2 color=red n=5 nope=nil data.a=1";
    char want[1024];
    strcpy(subject, "attrs");
    snprintf(want, sizeof want, all, "attrs");
    assert_string_equal(handler_said(r, h, &ev), want);

    strcpy(subject, "pairs");
    assert_string_equal(handler_said(r, h, &ev),
                        "attempt=number color=string correlationid=string data=table "
                        "datacontenttype=string id=string n=number priority=number "
                        "recordedtime=string sequence=number source=string specversion=string "
                        "streamversion=number subject=string time=string type=string");

    /* next() sees what pairs() sees: it showed the attributes read so far and
     * the light userdata key under which the event keeps its copy. */
    strcpy(subject, "next");
    assert_string_equal(handler_said(r, h, &ev),
                        "string:attempt string:color string:correlationid string:data "
                        "string:datacontenttype string:id string:n string:priority "
                        "string:recordedtime string:sequence string:source string:specversion "
                        "string:streamversion string:subject string:time string:type");

    strcpy(subject, "json");
    assert_string_equal(handler_said(r, h, &ev),
                        "{\"attempt\":2,\"color\":\"red\",\"correlationid\":\"c-9\","
                        "\"data\":{\"a\":1},\"datacontenttype\":\"application/json\","
                        "\"id\":\"e-1\",\"n\":5,\"priority\":3,"
                        "\"recordedtime\":\"2026-11-27T10:00:00.250000Z\",\"sequence\":42,"
                        "\"source\":\"/s\",\"specversion\":\"1.0\",\"streamversion\":7,"
                        "\"subject\":\"json\",\"time\":\"2026-11-27T10:00:00Z\",\"type\":\"t.x\"}");

    strcpy(subject, "assign");
    const char *assigned = handler_said(r, h, &ev);
    assert_non_null(strstr(assigned, " id=nil source=nil type=changed subject=assign "));
    assert_non_null(strstr(assigned, " extra=true was=/s"));

    /* The subject is in the table from the start (handlers nearly always
     * read it); the other attributes enter when first read. A subject
     * removed stays removed. */
    strcpy(subject, "raw");
    assert_string_equal(handler_said(r, h, &ev), "raw nil");
    strcpy(subject, "gone");
    assert_string_equal(handler_said(r, h, &ev), "nil nil");

    /* The metatable that reads attributes is the engine's: a handler's own replaces it whole. */
    strcpy(subject, "meta");
    assert_string_equal(handler_said(r, h, &ev), "false e-1 red no nope");

    strcpy(subject, "keep");
    assert_string_equal(handler_said(r, h, &ev), "kept");
    /* Another event runs; the kept one still reads as the first. */
    strcpy(subject, "kept");
    ev.attr[MT_ATTR_ID] = "e-2";
    ev.sequence = 43;
    ev.data = (const uint8_t *) "{\"a\":2}";
    ev.data_len = strlen((const char *) ev.data);
    snprintf(want, sizeof want, all, "keep");
    assert_string_equal(handler_said(r, h, &ev), want);

    r->close(h);
    mt_sub_conf_free(conf);
}

/*
 * event.data, an object, takes its members in when they are first read:
 * whatever the handler does it sees what a table filled at once showed:
 * members by name (nested values whole), pairs(), the JSON encoder,
 * json.object(), assignments (of nil too, before or after a read),
 * setmetatable(), emptiness by next(); a data table kept past its run
 * still reads in full later; a member nested too deep fails only when
 * read; an object of more than 64 members, or of less than 256 bytes of
 * text, is filled at once.
 */
static void test_lua_event_data_members_enter_when_first_read(void **state)
{
    mt_sub_conf *conf = mt_test_lua_sub(
        *state, "data",
        "local json = require('moontide.json')\n"
        "local kept\n"
        "return function(event, ctx)\n"
        "  local d, mode = event.data, event.subject\n"
        "  if mode == 'read' then\n"
        "    error(table.concat({tostring(d.a), tostring(d.a), d.b.c[2], tostring(d.nope),\n"
        "      tostring(d[1]), tostring(d.n == json.null), #d.e, json.encode(d.o)}, ' '), 0)\n"
        "  end\n"
        "  if mode == 'pairs' then\n"
        "    local _ = d.a\n"
        "    local keys = {}\n"
        "    for k, v in pairs(d) do keys[#keys + 1] = k .. '=' .. type(v) end\n"
        "    table.sort(keys)\n"
        "    error(table.concat(keys, ' '), 0)\n"
        "  end\n"
        "  if mode == 'json' then error(json.encode(d), 0) end\n"
        "  if mode == 'json-after' then local _ = d.b; error(json.encode({x = d}), 0) end\n"
        "  if mode == 'remove-read' then\n"
        "    local _ = d.a; d.a = nil\n"
        "    error(tostring(d.a) .. ' ' .. json.encode(d), 0)\n"
        "  end\n"
        "  if mode == 'remove-unread' then d.b = nil; d.z = 1; error(json.encode(d), 0) end\n"
        "  if mode == 'meta' then\n"
        "    local before = tostring(getmetatable(d))\n"
        "    setmetatable(d, {__index = function(_, k) return 'no ' .. k end})\n"
        "    error(before .. ' ' .. tostring(d.a) .. ' ' .. d.zz, 0)\n"
        "  end\n"
        "  if mode == 'mark' then error(json.encode(json.object(d)), 0) end\n"
        "  if mode == 'next' then error(tostring(next(d) ~= nil) .. ' ' .. json.encode(d), 0) end\n"
        "  if mode == 'keep' then kept = d; error('kept', 0) end\n"
        "  if mode == 'kept' then error(json.encode(kept), 0) end\n"
        "  if mode == 'skip' then error('ok ' .. tostring(d.a), 0) end\n"
        "  if mode == 'deep' then local _ = d.deep; error('read', 0) end\n"
        "  if mode == 'deep-json' then return json.encode(d) end\n"
        "  if mode == 'deep-meta' then return setmetatable(d, nil) end\n"
        "  if mode == 'many' then error(tostring(getmetatable(d) ~= false) .. ' ' .. d.k64, 0) end\n"
        "  error('unknown mode ' .. tostring(mode), 0)\n"
        "end\n");
    const mt_sub_runner *r = mt_lua_sub_runner();
    void *h;
    char err[256];
    assert_int_equal(r->open(conf, &h, err, sizeof err), MT_OK);

    /* Objects of 256 bytes of text or more (MT_LUA_JSON_LAZY_MIN_TEXT) are read so: "s" pads. */
    char pad[300];
    memset(pad, 't', 260);
    pad[260] = '\0';
    char data[512], whole[512], want[1024];
    snprintf(data, sizeof data,
             "{\"a\":1,\"b\":{\"c\":[\"x\",\"y\"]},\"e\":[],\"n\":null,\"o\":{},\"s\":\"%s\"}", pad);
    snprintf(whole, sizeof whole, "%s", data); /* the encoder sorts keys: already in order */
    assert_string_equal(handler_mode(r, h, 1, "read", data), "1 1 y nil nil true 0 {}");
    assert_string_equal(handler_mode(r, h, 2, "pairs", data),
                        "a=number b=table e=table n=userdata o=table s=string");
    assert_string_equal(handler_mode(r, h, 3, "json", data), whole);
    snprintf(want, sizeof want, "{\"x\":%s}", whole);
    assert_string_equal(handler_mode(r, h, 4, "json-after", data), want);
    snprintf(want, sizeof want,
             "nil {\"b\":{\"c\":[\"x\",\"y\"]},\"e\":[],\"n\":null,\"o\":{},\"s\":\"%s\"}", pad);
    assert_string_equal(handler_mode(r, h, 5, "remove-read", data), want);
    snprintf(want, sizeof want, "{\"a\":1,\"e\":[],\"n\":null,\"o\":{},\"s\":\"%s\",\"z\":1}", pad);
    assert_string_equal(handler_mode(r, h, 6, "remove-unread", data), want);
    assert_string_equal(handler_mode(r, h, 7, "meta", data), "false 1 no zz");
    assert_string_equal(handler_mode(r, h, 8, "mark", data), whole);
    snprintf(want, sizeof want, "true %s", whole);
    assert_string_equal(handler_mode(r, h, 9, "next", data), want);
    assert_string_equal(handler_mode(r, h, 10, "next", "{}"), "false {}");
    /* Smaller data is filled at once and has the object marker. */
    assert_string_equal(handler_mode(r, h, 44, "many", "{\"k64\":7}"), "true 7");

    /* Kept past its run, read in full in a later one, after other events went by. */
    assert_string_equal(handler_mode(r, h, 11, "keep", data), "kept");
    for (uint64_t seq = 12; seq < 40; seq++) {
        assert_string_equal(handler_mode(r, h, seq, "skip", "{\"a\":2}"), "ok 2");
    }
    assert_string_equal(handler_mode(r, h, 40, "kept", "{\"a\":3}"), whole);

    /* A member nested past the limit fails only when it is read. */
    char deep[700];
    size_t n = (size_t) snprintf(deep, sizeof deep, "{\"a\":4,\"s\":\"%s\",\"deep\":", pad);
    for (int i = 0; i < 130; i++) {
        deep[n++] = '[';
    }
    for (int i = 0; i < 130; i++) {
        deep[n++] = ']';
    }
    deep[n++] = '}';
    deep[n] = '\0';
    assert_string_equal(handler_mode(r, h, 41, "skip", deep), "ok 4");
    assert_non_null(strstr(handler_mode(r, h, 42, "deep", deep), "nesting deeper than 128"));
    assert_non_null(strstr(handler_mode(r, h, 45, "deep-json", deep),
                           "moontide.json.encode: $: nesting deeper than 128 levels"));
    assert_non_null(strstr(handler_mode(r, h, 46, "deep-meta", deep), "nesting deeper than 128"));

    /* More than 64 members: filled at once, with the object marker. */
    char many[2048];
    n = 0; /* over 256 bytes too */
    for (int i = 0; i <= 64; i++) {
        n += (size_t) snprintf(many + n, sizeof many - n, "%s\"k%d\":%d", i ? "," : "{", i, i);
    }
    snprintf(many + n, sizeof many - n, "}");
    assert_string_equal(handler_mode(r, h, 43, "many", many), "true 64");

    r->close(h);
    mt_sub_conf_free(conf);
}

#define T(f) cmocka_unit_test_setup_teardown(f, mt_test_setup_dir, mt_test_teardown_dir)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_lua_sandbox_hides_unsafe_libraries),
        T(test_lua_handlers_each_see_the_events_own_data),
        T(test_lua_event_table_holds_every_attribute),
        T(test_lua_event_data_members_enter_when_first_read),
        T(test_lua_load_accepts_text_only),
        T(test_lua_setmetatable_refuses_finalizers),
        T(test_lua_globals_are_private_to_a_state),
        T(test_lua_print_goes_to_the_log_callback),
        T(test_lua_budget_stops_an_infinite_loop_and_the_state_serves_on),
        T(test_lua_budget_cannot_be_swallowed_by_pcall),
        T(test_lua_budget_is_per_call),
        T(test_lua_memory_limit_stops_a_bomb_and_the_state_serves_on),
        T(test_lua_new_refuses_a_limit_too_small_for_the_sandbox),
        T(test_lua_table_error_reads_as_json),
        T(test_lua_syntax_error_reads_file_line_message),
        T(test_lua_syntax_error_keeps_a_long_path_whole),
        T(test_lua_check_file_compiles_without_running),
        T(test_lua_limits_breached_while_loading_name_the_file),
        T(test_lua_binary_handler_file_is_refused),
        T(test_lua_handler_file_must_return_a_handler),
        T(test_lua_table_handler_keeps_its_fields),
        T(test_lua_require_finds_modules_in_configured_paths),
        T(test_lua_require_refuses_everything_else),
        T(test_lua_json_round_trips_exactly),
        T(test_lua_json_types_in_lua),
        T(test_lua_to_json_refuses_what_json_cannot_hold),
        T(test_lua_json_nesting_limit_is_128_both_ways),
        T(test_lua_push_json_text_reports_bad_input_and_memory),
        T(test_lua_null_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

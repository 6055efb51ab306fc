/*
 * mt_test.h - shared helpers for the cmocka unit tests: cmocka's include
 * order, and fresh temporary directories removed after each test.
 */
#ifndef MT_TEST_H
#define MT_TEST_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mt_topo.h"

/* Creates a fresh directory under $TMPDIR (or /tmp); returns it (caller frees). */
static inline char *mt_test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/moontide-test-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

/* Removes a directory tree made by mt_test_tmpdir and frees the string. */
static inline void mt_test_rmdir(char *dir)
{
    if (!dir) {
        return;
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    int rc = system(cmd);
    (void) rc;
    free(dir);
}

/* cmocka setup and teardown giving each test a fresh directory as *state. */
static inline int mt_test_setup_dir(void **state)
{
    *state = mt_test_tmpdir();
    return 0;
}

static inline int mt_test_teardown_dir(void **state)
{
    mt_test_rmdir(*state);
    return 0;
}

/* Writes 'text' to DIR/NAME; returns the path (caller frees). */
static inline char *mt_test_write_file(const char *dir, const char *name, const char *text)
{
    char *path = malloc(strlen(dir) + strlen(name) + 2);
    assert_non_null(path);
    sprintf(path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/*
 * Writes the Lua handler 'lua' to DIR/NAME.lua and parses subscription NAME
 * on topic "t.#" that runs it (caller frees with mt_sub_conf_free).
 */
static inline mt_sub_conf *mt_test_lua_sub(const char *dir, const char *name, const char *lua)
{
    char file[96];
    snprintf(file, sizeof file, "%s.lua", name);
    char *path = mt_test_write_file(dir, file, lua);
    /* Parsed as stored (the file need not exist), then pointed at the file:
     * a definition may only name a relative path, and DIR is absolute. */
    const char *def = "{\"topics\":[\"t.#\"],\"handler\":\"handler.lua\"}";
    mt_topo_errs errs = {0};
    mt_sub_conf *conf = NULL;
    assert_int_equal(mt_topo_parse_stored_sub(name, def, strlen(def), "test", &conf, &errs),
                     MT_OK);
    free(conf->handler);
    conf->handler = path;
    return conf;
}

#endif

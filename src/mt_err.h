/*
 * mt_err.h - error codes shared by every module, and mt_assert().
 *
 * Fallible functions return mt_err; MT_OK is 0 so `if (rc) return rc;`
 * reads naturally. Codes from libraries (LMDB, libyaml, Lua, errno) never
 * cross a module boundary: each module maps them here. Thread-safe, no state.
 */
#ifndef MT_ERR_H
#define MT_ERR_H

typedef enum mt_err {
    MT_OK = 0,
    MT_EINVAL,      /* malformed input or argument from outside */
    MT_ENOMEM,      /* an allocation sized by outside input failed */
    MT_ENOTFOUND,   /* no such key, stream, subscription ... */
    MT_EEXISTS,     /* already present */
    MT_ECONFLICT,   /* expected version does not match */
    MT_EFULL,       /* the store's map (or the write-ahead file) is full */
    MT_EIO,         /* storage or OS failure; logged where it happened */
    MT_ETOOBIG,     /* input larger than a configured limit */
    MT_ECONFIG,     /* invalid configuration */
    MT_ELUA,        /* a Lua handler failed */
    MT_ECLOSED,     /* the object is shutting down */
    MT_EUNAVAIL,    /* a peer (engine, broker) cannot be reached */
    MT_ETIMEOUT     /* a deadline passed */
} mt_err;

/* A short constant name for 'rc', e.g. "conflict". Never NULL. */
const char *mt_err_str(mt_err rc);

/* Prints file:line and the failed condition, then aborts. For broken invariants only. */
void mt_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));
#define mt_assert(c) do { if (!(c)) mt_assert_fail(#c, __FILE__, __LINE__); } while (0)

#endif

#include <stdio.h>
#include <stdlib.h>
#include "mt_err.h"

const char *mt_err_str(mt_err rc)
{
    switch (rc) {
    case MT_OK: return "ok";
    case MT_EINVAL: return "invalid";
    case MT_ENOMEM: return "out of memory";
    case MT_ENOTFOUND: return "not found";
    case MT_EEXISTS: return "exists";
    case MT_ECONFLICT: return "conflict";
    case MT_EFULL: return "store full";
    case MT_EIO: return "i/o error";
    case MT_ETOOBIG: return "too big";
    case MT_ECONFIG: return "bad configuration";
    case MT_ELUA: return "lua error";
    case MT_ECLOSED: return "closed";
    case MT_EUNAVAIL: return "unavailable";
    case MT_ETIMEOUT: return "timeout";
    }
    return "unknown error";
}

void mt_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "moontide: %s:%d: assertion failed: %s\n", file, line, cond);
    abort();
}

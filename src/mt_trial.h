/*
 * mt_trial.h - loading a handler first in a process of its own.
 *
 * A handler file's top-level code runs when it loads, under the
 * instruction budget and the memory limit; but a C function of the string
 * library can run for hours within one instruction (see mt_watch.h), and
 * nothing stops it from outside but ending the process. At start the
 * watchdog does that. For a reload (SIGHUP) that would end an engine that
 * runs well on the code it has, so a reload loads each handler first in a
 * child, `moontide check --handler FILE` run from the engine's own binary,
 * and kills the child past the subscription's limits.time. Only a load
 * that ended well there is done again in the engine.
 *
 * The child is a fresh process (posix_spawn of /proc/self/exe): it shares
 * no locks, files or threads with the engine. Its standard error, the
 * reason a load failed, comes back through a pipe the loop watches. It
 * stops itself past limits.time (`--time`) and dies with the engine
 * (PR_SET_PDEATHSIG, and the engine's pid in MOONTIDE_TRIAL_PARENT for a
 * death before the child got that far).
 *
 * The file is read before the child starts and again once it loaded it;
 * the engine then loads the bytes the child loaded. Modules the handler
 * requires are read again by the engine: they load untried, with the
 * watchdog as the last resort, as at start.
 */
#ifndef MT_TRIAL_H
#define MT_TRIAL_H

#include "mt_err.h"
#include "mt_loop.h"
#include "mt_topo.h"

typedef struct mt_trial mt_trial;

/*
 * Called on the loop thread once the trial ended: MT_OK if the handler
 * loaded, and the file holds what it held when the child started (else it
 * is tried again, up to three times); then 'src' (len bytes, valid during
 * the call) is that text, for the engine to load rather than the file read
 * again. MT_ELUA if it did not load, 'msg' saying why (the child's report,
 * "FILE:LINE: message", or that it ran past limits.time and was stopped);
 * MT_EUNAVAIL if the child could not try it (the binary is not a moontide
 * that knows `check --handler`: started through the dynamic loader or
 * valgrind); MT_EIO if the child ended otherwise, as by a signal not sent
 * by the trial. The trial is freed after the call returns; 'done' is never
 * called from within mt_trial_start.
 */
typedef void (*mt_trial_done_fn)(mt_err rc, const char *msg, const char *src, size_t len,
                                 void *arg);

/*
 * Starts loading the handler of 'conf' (not kept) in a child process.
 * MT_OK and *out (the caller may cancel it with mt_trial_cancel until
 * 'done' is called), or MT_EIO with nothing started and the reason in
 * 'err' (errlen bytes).
 */
mt_err mt_trial_start(mt_loop *loop, const mt_sub_conf *conf, mt_trial_done_fn done, void *arg,
                      mt_trial **out, char *err, size_t errlen);

/* Kills the child and frees the trial without calling 'done'. NULL does nothing. */
void mt_trial_cancel(mt_trial *t);

#endif

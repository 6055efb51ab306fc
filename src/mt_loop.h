/*
 * mt_loop.h - the engine's event loop: a libevent base made thread-aware,
 * stop signals, and the wake-up that brings the store's finished jobs back
 * onto the loop thread.
 *
 * Everything registered here runs on the loop thread (the one calling
 * mt_loop_run). mt_loop does not know HTTP or the log; it only wires them.
 */
#ifndef MT_LOOP_H
#define MT_LOOP_H
#include "mt_err.h"
#include "mt_store.h"

struct event_base;
typedef struct mt_loop mt_loop;

/* Makes libevent thread-aware and creates the base. MT_EIO on failure. */
mt_err mt_loop_new(mt_loop **out);

/* Frees the base and everything registered. NULL does nothing. */
void mt_loop_free(mt_loop *l);

/*
 * The base has MT_LOOP_PRIORITIES priorities. Events get the middle one
 * unless set otherwise; the last (lowest) is for work done in slices, such
 * as an SSE fan-out, that should give way to requests between slices.
 */
#define MT_LOOP_PRIORITIES 3
struct event_base *mt_loop_base(mt_loop *l);

/*
 * Runs 'store's completion callbacks on the loop thread whenever its writer
 * reports finished jobs. Call mt_loop_detach_store before closing the store.
 */
void mt_loop_attach_store(mt_loop *l, mt_store *store);
void mt_loop_detach_store(mt_loop *l);

/*
 * On SIGTERM or SIGINT, calls 'on_stop' (once) and ends mt_loop_run.
 * SIGPIPE is ignored (a client that goes away is not a reason to die).
 */
void mt_loop_on_stop(mt_loop *l, void (*on_stop)(int sig, void *arg), void *arg);

/* On SIGHUP (unless stopping), calls 'on_reload'. Without it SIGHUP ends the process. */
void mt_loop_on_reload(mt_loop *l, void (*on_reload)(void *arg), void *arg);

/* Runs until stopped. Returns 0, or -1 if the loop failed. */
int mt_loop_run(mt_loop *l);

/* Ends mt_loop_run after the current callbacks. */
void mt_loop_stop(mt_loop *l);

/* Runs the loop for up to 'ms' milliseconds (to flush answers while draining). */
void mt_loop_run_for(mt_loop *l, int ms);

#endif

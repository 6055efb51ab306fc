/*
 * mt_watch.h - the watchdog of handler runs.
 *
 * The instruction budget stops a handler between two Lua instructions. A C
 * function of the string library can run far longer inside one: string.find
 * with a pattern that backtracks ("a*a*a*a*b" over a few thousand "a") would
 * take hours, on the writer thread that every publish and every
 * subscription needs. Nothing can stop it from outside without leaving
 * LMDB's write transaction and the Lua state half changed.
 *
 * So a thread looks at the runs in progress four times a second. When one
 * has run longer than its subscription's limits.time, it writes what ran
 * into STUCK_FILE in the data directory (synced), logs it as an error, and
 * ends the process with exit status 75 (EX_TEMPFAIL: start it again).
 * Nothing acknowledged is lost: that is a crash, and recovery replays the
 * write-ahead file. At the next start mt_watch_start reads the file and
 * removes it; when that subscription comes to that event again, the
 * handler is not run: the message goes to the dead-letter queue with the
 * reason (mt_watch_take), so one restart, not one per retry, deals with it.
 *
 * Without mt_watch_start (tests, `moontide check`) every call is a no-op
 * that returns false. The state is process-wide, like the signals a
 * process gets: one engine per process.
 */
#ifndef MT_WATCH_H
#define MT_WATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "mt_err.h"
#include "mt_event.h"
#include "mt_mem.h"

#define MT_WATCH_FILE "stuck.json"
#define MT_WATCH_EXIT 75 /* EX_TEMPFAIL */

/*
 * Reads and removes DIR/stuck.json (if any), then starts the watchdog
 * thread. MT_EIO if the file cannot be read or removed, MT_EINVAL if it is
 * not what this module writes; err names the file and the problem.
 */
mt_err mt_watch_start(const char *dir, char *err, size_t errlen);

/* Stops the watchdog thread and forgets every note, once no thread runs handlers. */
void mt_watch_stop(void);

/*
 * The calling thread begins running subscription 'sub''s handler on 'ev'
 * (attempt 'attempt'); the watchdog ends the process if it has not called
 * mt_watch_leave after limit_ms. 'sub' and 'ev' must stay valid until then.
 */
void mt_watch_enter(const char *sub, const mt_event *ev, uint32_t attempt, uint64_t limit_ms);

/*
 * As mt_watch_enter, for loading the handler file 'file' (its top-level
 * code runs). Past the limit the note names the file, and at the next
 * start mt_watch_take_load refuses to load it once.
 */
void mt_watch_enter_load(const char *sub, const char *file, uint64_t limit_ms);

/* The run begun by mt_watch_enter or mt_watch_enter_load on this thread has returned. */
void mt_watch_leave(void);

/* The calling thread runs no more handlers: its slot may serve another thread. */
void mt_watch_forget(void);

/*
 * True if the handler of 'sub' got stuck on 'ev' before the last restart:
 * 'why' (if not NULL) gets the reason, and the note is used up (a redrive
 * runs the handler again). A note names the event by source and id, not
 * by sequence: when the stuck run was in the group that appended the
 * event, the append was never committed nor acknowledged, and the
 * publisher's retry (same source and id) may get another sequence.
 */
bool mt_watch_take(const char *sub, const mt_event *ev, mt_buf *why);

/*
 * True if loading the handler of 'sub' got stuck before the last restart:
 * 'why' gets the reason (the caller fails the load with it), and the note
 * is used up (the next start tries again).
 */
bool mt_watch_take_load(const char *sub, mt_buf *why);

/* As mt_watch_take, but leaves the note for the writer to take. */
bool mt_watch_noted(const char *sub, const mt_event *ev);

#endif

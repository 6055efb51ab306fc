/*
 * mt_datacache.h - events' JSON data, parsed, kept per thread.
 *
 * Handlers get an event's data as Lua values, converted from a jansson
 * value. Parsing the text is most of that work: with several handler
 * subscriptions on one topic, each would parse every event again, on the
 * same thread (the writer's) and within a few jobs of one another; and the
 * structured-mode parsers have already parsed the data of a published
 * event once, to check it (mt_log_append gives that value to the cache).
 * The cache keeps the parsed value in the slot of the event's sequence
 * with the data's exact text, and gives it back only
 * for the same sequence and the same text, so a sequence used again for
 * other data (an undone group, another store) is never mistaken.
 *
 * Per thread: a value put in by one thread is seen by that thread only.
 * Most are that thread's own memory. The values the loop thread parsed on
 * publish are not: the append gives the batch's reference to the writer's
 * cache (mt_datacache_give), so that from then on only the writer touches
 * the value, its reference count included; when the writer lets go of the
 * last reference, the value is handed back for the loop thread to free
 * (mt_datacache_reap) rather than freed on the writer. Freeing another
 * thread's memory takes that thread's malloc arena lock, and the loop
 * thread's own mallocs then wait (a tenth of its samples in a live fan-out
 * at 25,000 events/s were in the lock when the writer freed them); a deep
 * copy on the writer, which this replaces, was 4% of the writer's time.
 * Bounded: data longer than 2 KiB is not kept, nor more than 8 MiB of text
 * per thread; a thread's entries are freed when it ends.
 */
#ifndef MT_DATACACHE_H
#define MT_DATACACHE_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The value kept for (sequence, text) on this thread, as a new reference; NULL if none. */
json_t *mt_datacache_get(uint64_t sequence, const char *text, size_t len);

/*
 * Keeps 'value' (the parse of 'text', len bytes; a reference of its own)
 * for 'sequence' on this thread, in place of what its slot held. Does
 * nothing for sequence 0, text too long to keep, or when the thread's text
 * budget is spent.
 */
void mt_datacache_put(uint64_t sequence, const char *text, size_t len, json_t *value);

/*
 * As mt_datacache_put for a value another thread made (the loop thread,
 * which calls mt_datacache_reap), taking the caller's reference: no other
 * thread may touch the value from here on. When this thread lets go of its
 * last reference, the value is handed back to be freed there (past 16,384
 * values waiting, this thread frees them itself).
 */
void mt_datacache_give(uint64_t sequence, const char *text, size_t len, json_t *value);

/* Values handed back and not yet freed (for tests). */
size_t mt_datacache_waiting(void);

/* Frees the foreign values the caches have let go. The loop thread calls it. */
void mt_datacache_reap(void);

/*
 * Whether anyone reads the cache: the handlers count themselves in and out
 * (any thread), and an append with no handler in the process puts
 * nothing: nobody would read it.
 */
void mt_datacache_use(int delta);
bool mt_datacache_used(void);

#endif

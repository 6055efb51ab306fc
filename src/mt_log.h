/*
 * mt_log.h - the event log: append with deduplication and expected-version
 * checks, and reads of the global log and of one stream.
 *
 * Appending runs inside a store write job (mt_store_submit), so it shares
 * the group commit; reads take any transaction. The log assigns each new
 * event its sequence (global, from 1, contiguous), its streamversion (per
 * subject, from 0, contiguous) and its recordedtime. It owns these
 * databases of the store: MT_DB_LOG, MT_DB_STREAMS, MT_DB_HEADS, MT_DB_IDS,
 * and the key MT_LOG_INDEXED_KEY of MT_DB_META. No state of its own: every
 * call works from the transaction it is given.
 *
 * The stream index (MT_DB_STREAMS) is brought up to date in bulk, not per
 * event. Per event, a subject's entry lands on that subject's leaf of the
 * B-tree, so with many subjects each event dirtied a page of its own in
 * every commit; in bulk, the events of one subject share it. The mark
 * (MT_LOG_INDEXED_KEY, u64 BE) says up to which sequence every event is
 * indexed. Once MT_LOG_INDEX_EVERY events lie beyond it, an append opens a
 * window on them (reading and sorting their entries by key), and each
 * append after it indexes the next MT_LOG_INDEX_SLICE of them, so that no
 * append carries the whole step; the last slice moves the mark. A window
 * still open when twice MT_LOG_INDEX_EVERY events lie beyond the mark is
 * finished at once. A subject's entries go in in version order, so the
 * index holds each subject's versions from 0 on without a gap at every
 * point, and a stream read takes what the index does not give from the
 * log beyond the mark (fewer than 2 * MT_LOG_INDEX_EVERY events plus one
 * append's, walked only when the subject's head is past what the index
 * gave). Mark, window and entries change in one transaction, so every
 * snapshot reads a whole stream. A store without the mark indexed every
 * event as it came; the first append there sets the mark at its head.
 */
#ifndef MT_LOG_H
#define MT_LOG_H
#include <stdbool.h>
#include <stdint.h>
#include "mt_err.h"
#include "mt_event.h"
#include "mt_store.h"

/* The meta key of the stream index's mark. */
#define MT_LOG_INDEXED_KEY "log.streams.indexed"
/* Once this many events lie beyond the stream index, a window opens on them. */
#define MT_LOG_INDEX_EVERY 4096
/* Index entries an append adds to an open window, at most. */
#define MT_LOG_INDEX_SLICE 1024

/* An expected version, as in EventStoreDB. */
typedef enum mt_expect_kind {
    MT_EXPECT_ANY = 0,   /* no check */
    MT_EXPECT_NO_STREAM, /* the subject has no events */
    MT_EXPECT_EXISTS,    /* the subject has at least one event */
    MT_EXPECT_VERSION    /* the subject's last streamversion is 'version' */
} mt_expect_kind;

typedef struct mt_expect {
    mt_expect_kind kind;
    uint64_t version;    /* with MT_EXPECT_VERSION */
} mt_expect;

/* Parses "any", "no_stream", "exists" or a decimal version. MT_EINVAL otherwise. */
mt_err mt_log_parse_expect(const char *s, mt_expect *out);

/* What happened to one event of an append. */
typedef struct mt_log_result {
    uint64_t sequence;
    uint64_t streamversion;  /* meaningful when has_subject */
    bool has_subject;
    bool duplicate;          /* already in the log: nothing appended */
} mt_log_result;

/*
 * Appends the events of 'b' (records from mt_event_parse_*) atomically,
 * inside write transaction 't'. Records in 'b' get their positions written
 * in place. 'results' has room for b->count entries.
 *
 * An event whose (source, id) is already in the log, or earlier in the same
 * batch, is a duplicate: nothing is appended for it and its result names the
 * original. If 'expect' is not ANY, every event must share one subject and
 * the check is made against that stream before the first new event;
 * duplicates alone never fail the check (a retried append succeeds).
 *
 * Returns MT_OK; MT_ECONFLICT on a failed check (sets *current to the last
 * version, or -1 when the stream does not exist); MT_EINVAL if 'expect' is
 * given for events without one common subject; MT_EFULL, MT_EIO from the
 * store. On error the caller's job must fail so the transaction is undone.
 */
mt_err mt_log_append(mt_txn *t, mt_event_batch *b, const mt_expect *expect,
                     mt_log_result *results, int64_t *current);

/* The last sequence in the log, 0 if empty. */
mt_err mt_log_head(mt_txn *t, uint64_t *seq);

/*
 * The last version of 'subject'. Sets *exists and *version (0 if none).
 * MT_EIO on a store error.
 */
mt_err mt_log_stream_head(mt_txn *t, const char *subject, bool *exists, uint64_t *version);

/*
 * Called for each event read; the event's pointers live until the callback
 * returns. Return non-zero to stop (that value is returned by the reader).
 */
typedef int (*mt_log_visit_fn)(const mt_event *ev, void *arg);

/*
 * Visits events with sequence > after, in order, at most 'limit'.
 * Returns 0, the visitor's non-zero stop value, or -1 on a store error or a
 * corrupt record (logged with its sequence).
 */
int mt_log_read(mt_txn *t, uint64_t after, uint64_t limit, mt_log_visit_fn visit, void *arg);

/*
 * Indexes every event beyond the stream index's mark and moves the mark to
 * the log's head (inside a write transaction). MT_EFULL, MT_EIO.
 */
mt_err mt_log_index_streams(mt_txn *t);

/* Visits events of 'subject' with streamversion >= from, at most 'limit'. Same returns. */
int mt_log_read_stream(mt_txn *t, const char *subject, uint64_t from, uint64_t limit,
                       mt_log_visit_fn visit, void *arg);

/* The sequence of the event with this source and id: MT_ENOTFOUND if none; MT_EIO. */
mt_err mt_log_find_id(mt_txn *t, const char *source, const char *id, uint64_t *seq);

/* Reads the event at 'seq' into *ev (pointers valid until the txn ends). MT_ENOTFOUND. */
mt_err mt_log_get(mt_txn *t, uint64_t seq, mt_event *ev);

#endif

/*
 * mt_log.h - the event log: append with deduplication and expected-version
 * checks, and reads of the global log and of one stream.
 *
 * Appending runs inside a store write job (mt_store_submit), so it shares
 * the group commit; reads take any transaction. The log assigns each new
 * event its sequence (global, from 1, contiguous), its streamversion (per
 * subject, from 0, contiguous) and its recordedtime. It owns these
 * databases of the store: MT_DB_LOG, MT_DB_STREAMS, MT_DB_HEADS, MT_DB_IDS.
 * No state of its own: every call works from the transaction it is given.
 */
#ifndef MT_LOG_H
#define MT_LOG_H
#include <stdbool.h>
#include <stdint.h>
#include "mt_err.h"
#include "mt_event.h"
#include "mt_store.h"

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

/* Visits events of 'subject' with streamversion >= from, at most 'limit'. Same returns. */
int mt_log_read_stream(mt_txn *t, const char *subject, uint64_t from, uint64_t limit,
                       mt_log_visit_fn visit, void *arg);

/* Reads the event at 'seq' into *ev (pointers valid until the txn ends). MT_ENOTFOUND. */
mt_err mt_log_get(mt_txn *t, uint64_t seq, mt_event *ev);

#endif

/*
 * mt_event.h - the event: CloudEvents 1.0 attributes plus engine attributes,
 * its binary record codec, and its CloudEvents JSON forms.
 *
 * A record is what the log stores:
 *
 *   offset  size  field
 *   0       1     format (MT_EVENT_FORMAT = 1)
 *   1       1     data kind (mt_data_kind)
 *   2       1     priority 0-9, or 0xff when absent
 *   3       1     reserved, 0
 *   4       8     sequence          (big-endian; assigned by the log writer)
 *   12      8     streamversion     (big-endian; assigned by the log writer)
 *   20      8     recordedtime, microseconds since the epoch (big-endian)
 *   28      8     expirytime, us (0 = none)
 *   36      8     deliverafter, us (0 = none)
 *   44      4*N   length of each string attribute, including its NUL (0 = absent)
 *   ...           the strings, in mt_event_attr order, each NUL-terminated
 *   ...           data: the rest of the record, the bytes as sent
 *
 * Parsing validates everything a publisher sends and refuses what the
 * engine assigns. JSON data is kept as its exact text (64-bit integers
 * survive; integers beyond int64 are refused). Pure: no I/O, no global
 * state, any thread.
 */
#ifndef MT_EVENT_H
#define MT_EVENT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mt_err.h"
#include "mt_mem.h"

#define MT_EVENT_FORMAT 1

/* Limits that keep every index key within LMDB's 511-byte key size. */
#define MT_EVENT_MAX_ID 200
#define MT_EVENT_MAX_SOURCE 256
#define MT_EVENT_MAX_SUBJECT 400
#define MT_EVENT_MAX_TYPE 255
#define MT_EVENT_MAX_ATTR 4096   /* any other string attribute */

typedef enum mt_data_kind {
    MT_DATA_NONE = 0,   /* no data */
    MT_DATA_JSON = 1,   /* JSON text, returned as "data": <text> */
    MT_DATA_TEXT = 2,   /* text bytes, returned as a "data" string */
    MT_DATA_BINARY = 3  /* opaque bytes, returned as "data_base64" */
} mt_data_kind;

typedef enum mt_event_attr {
    MT_ATTR_ID = 0,
    MT_ATTR_SOURCE,
    MT_ATTR_TYPE,
    MT_ATTR_SUBJECT,
    MT_ATTR_TIME,
    MT_ATTR_DATACONTENTTYPE,
    MT_ATTR_DATASCHEMA,
    MT_ATTR_DATAVERSION,
    MT_ATTR_CORRELATIONID,
    MT_ATTR_CAUSATIONID,
    MT_ATTR_TRACEPARENT,
    MT_ATTR_EXPIRYTIME,
    MT_ATTR_DELIVERAFTER,
    MT_ATTR_REPLYTO,
    MT_ATTR_EXTENSIONS,  /* other extension attributes, as a compact JSON object */
    MT_ATTR_COUNT
} mt_event_attr;

typedef struct mt_event {
    const char *attr[MT_ATTR_COUNT]; /* NUL-terminated, NULL when absent; borrowed */
    uint64_t sequence;               /* global log position, from 1 */
    uint64_t streamversion;          /* 0-based within its subject; 0 without subject */
    int64_t recordedtime_us;         /* when the log appended it */
    int64_t expiry_us;               /* 0 = never expires */
    int64_t deliverafter_us;         /* 0 = deliverable at once */
    int priority;                    /* 0-9, -1 when absent */
    mt_data_kind data_kind;
    const uint8_t *data;             /* borrowed; data_len bytes */
    size_t data_len;
} mt_event;

/* The CloudEvents attribute name of 'a', e.g. "datacontenttype". */
const char *mt_event_attr_name(mt_event_attr a);

/* Sets every field to "absent". */
void mt_event_init(mt_event *ev);

/*
 * Sets string attribute 'a' (not extensions) of an event built in code to
 * 'v' (borrowed; valid UTF-8 is the caller's to check), with the checks a
 * parsed one gets: size, required ones not empty, a type a dot-separated
 * name, time attributes RFC 3339 (setting expiry_us or deliverafter_us).
 * MT_EINVAL with "name: what is wrong" in err.
 */
mt_err mt_event_set_attr(mt_event *ev, mt_event_attr a, const char *v, char *err, size_t errlen);

/* Appends the record for 'ev' to 'out'. Never fails (sizes are validated on parse). */
void mt_event_encode(const mt_event *ev, mt_buf *out);

/*
 * Reads a record. Fields of *ev point into 'rec' and live as long as it does.
 * MT_EINVAL if the record is truncated, has an unknown format, or a string
 * is not NUL-terminated.
 */
mt_err mt_event_decode(const void *rec, size_t len, mt_event *ev);

/*
 * Points the fields of 'ev', decoded from the record at 'from', at the same
 * places in a byte-for-byte copy of that record at 'to' (no new decode).
 */
void mt_event_rebase(mt_event *ev, const void *from, const void *to);

/* Sets the writer-assigned fields in an encoded record in place. */
void mt_event_record_set_position(void *rec, uint64_t sequence, uint64_t streamversion,
                                  int64_t recordedtime_us);

/*
 * The subject of a record, without decoding the rest: sets *subject (NULL
 * when absent; pointing into 'rec') and *streamversion. MT_EINVAL where
 * mt_event_decode would refuse the record's header or its first strings.
 */
mt_err mt_event_record_subject(const void *rec, size_t len, const char **subject,
                               uint64_t *streamversion);

/* Reads the writer-assigned sequence of an encoded record (0 if too short). */
uint64_t mt_event_record_sequence(const void *rec, size_t len);

/*
 * A parsed request: one or more encoded records, each still without its
 * sequence, stream version and recorded time.
 */
typedef struct mt_event_batch {
    mt_buf buf;         /* the records, back to back */
    size_t *off;        /* owned; start of record i in buf */
    size_t *len;        /* owned; length of record i */
    /*
     * owned references: record i's JSON data as the structured parsers
     * read it, or NULL (any other kind, binary mode, mt_event_batch_add).
     * mt_log_append gives them to the writer's data cache (and sets them
     * NULL), so that handlers do not parse the same text again
     * (mt_datacache.h).
     */
    struct json_t **data;
    int count;
    int cap;
    bool data_local;    /* data[] was made on the appending thread: cached as it is */
} mt_event_batch;

void mt_event_batch_init(mt_event_batch *b);
void mt_event_batch_free(mt_event_batch *b);
/* Adds the record for 'ev'. */
void mt_event_batch_add(mt_event_batch *b, const mt_event *ev);

/*
 * Parses a structured-mode body (one JSON object) into 'b'. On failure
 * returns MT_EINVAL and writes a message naming the attribute (and, for
 * batches, the index: "events[2].type: ...") into err (errlen bytes).
 * MT_ENOMEM if an allocation for the payload failed.
 */
mt_err mt_event_parse_structured(const char *body, size_t len, mt_event_batch *b, char *err,
                                 size_t errlen);

/* Parses a batch-mode body (a JSON array of event objects). Same errors. */
mt_err mt_event_parse_batch(const char *body, size_t len, mt_event_batch *b, char *err,
                            size_t errlen);

/*
 * Parses a binary-mode event: 'names'/'values' hold 'n' attributes already
 * taken from the ce-* headers (names without the "ce-" prefix, lower-case,
 * values percent-decoded); 'content_type' (may be NULL) becomes
 * datacontenttype and 'body' the data. Same errors.
 */
mt_err mt_event_parse_binary(const char *const *names, const char *const *values, int n,
                             const char *content_type, const char *body, size_t len,
                             mt_event_batch *b, char *err, size_t errlen);

/* True if a content type (parameters ignored) is JSON: application/json, text/json, +json. */
bool mt_event_content_type_is_json(const char *ct);

/*
 * Appends 'ev' as a structured CloudEvent (one line of compact JSON, no
 * newline) to 'out', with its engine attributes.
 */
void mt_event_to_json(const mt_event *ev, mt_buf *out);

/*
 * Appends 's' (n bytes) as a JSON string. jansson encodes it, except when
 * its JSON form is itself in quotes (printable ASCII without '"' or '\\'),
 * the usual case for attributes, which is copied as it is. Returns false,
 * appending nothing, if 's' is not UTF-8.
 */
bool mt_event_json_string(mt_buf *out, const char *s, size_t n);

#endif

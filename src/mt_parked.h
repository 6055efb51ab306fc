/*
 * mt_parked.h - the record of a parked message: one a subscription holds
 * outside its cursor because it waits behind its lane's head, failed and
 * waits for a retry, is held back until a time, or is leased to a pull
 * consumer.
 *
 * Records are written and read by the writer for every leased, retried or
 * blocked message, so they are a compact binary layout rather than JSON;
 * only the attempts' error list, read when a message is dead-lettered, is
 * kept as JSON text. Records of the earlier JSON layout are still read.
 * Pure functions, no state: safe on any thread.
 *
 * Layout (big-endian):
 *   0   1  format (1)
 *   1   1  state (mt_park_state), with bit 7 set if redriven
 *   2   4  attempts
 *   6   8  due time, microseconds since the epoch (0 = none)
 *   14  8  lease nonce (when leased)
 *   22  2  lane length L
 *   24  L  lane
 *   ..     errors: a JSON array, or nothing
 */
#ifndef MT_PARKED_H
#define MT_PARKED_H

#include <jansson.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include "mt_err.h"
#include "mt_mem.h"

/* A lane name's longest form: "pN:s:" + a subject of at most MT_EVENT_MAX_SUBJECT bytes, with room. */
#define MT_LANE_MAX 410

typedef enum mt_park_state {
    MT_PARK_NONE = 0,    /* not stored yet: a message on its first attempt */
    MT_PARK_BLOCKED = 1, /* waits behind the head of its lane */
    MT_PARK_RETRY = 2,   /* heads its lane; due in the time index */
    MT_PARK_LEASED = 3   /* heads its lane, leased to a pull consumer until 'due_us' */
} mt_park_state;

typedef struct mt_parked {
    mt_park_state state;
    uint32_t attempts;
    int64_t due_us;
    uint64_t lease;             /* the lease token's nonce, when leased */
    bool redriven;              /* back from the dead-letter queue: its expiry no longer applies */
    char lane[MT_LANE_MAX + 1];
    char *errors;               /* owned: JSON array text, or NULL for none */
} mt_parked;

/* A record with no attempts, no lane and no errors, state MT_PARK_NONE. */
void mt_parked_init(mt_parked *p);
void mt_parked_free(mt_parked *p);

/* Appends the binary record of 'p' to 'out'. */
void mt_parked_encode(const mt_parked *p, mt_buf *out);

/*
 * Reads a stored record, binary or of the earlier JSON layout, into 'p'
 * (initialised here; free it with mt_parked_free). MT_EIO if it is neither.
 */
mt_err mt_parked_decode(const void *v, size_t len, mt_parked *p);

/*
 * Reads only the state and attempts of a stored record, allocating nothing
 * for the binary layout (the earlier JSON layout is decoded whole).
 * MT_EIO if it is neither.
 */
mt_err mt_parked_peek(const void *v, size_t len, mt_park_state *state, uint32_t *attempts);

/* Adds 'entry' (reference stolen) to the errors, keeping the last 'keep'. */
void mt_parked_add_error(mt_parked *p, json_t *entry, size_t keep);

/* The errors as a new JSON array (empty if none). */
json_t *mt_parked_errors(const mt_parked *p);

/* The lease token of message 'seq' with nonce 'nonce': "SEQ-NONCE" (nonce in 16 hex digits). */
void mt_parked_token(uint64_t seq, uint64_t nonce, char *buf, size_t len);

#endif

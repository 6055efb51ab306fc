/*
 * mt_topic.h - topic names and subscription patterns.
 *
 * A topic is a '.'-separated name such as "order.eu.created" (an event's
 * `type`). A pattern may use '*' for exactly one word and '#' for zero or
 * more words, as a RabbitMQ topic exchange does, so a pattern means the same
 * in moontide and in a RabbitMQ binding. '>' is accepted as the last word
 * as an alias of '#' (NATS style: "order.>"). Pure functions: no allocation,
 * no global state.
 */
#ifndef MT_TOPIC_H
#define MT_TOPIC_H
#include <stdbool.h>
#include "mt_err.h"

/*
 * Decides whether 'topic' matches 'pattern'. Sets *match (false on error).
 * Returns MT_OK, or MT_EINVAL if a string is NULL or empty, the topic
 * holds a wildcard or an empty word, or a wildcard in the pattern is
 * misplaced (not a whole word; '>' not last).
 */
mt_err mt_topic_match(const char *pattern, const char *topic, bool *match);

/* MT_OK if 'pattern' is a valid pattern, else MT_EINVAL. */
mt_err mt_topic_validate_pattern(const char *pattern);

/* MT_OK if 'topic' is a valid topic name (no wildcards, no empty words), else MT_EINVAL. */
mt_err mt_topic_validate_name(const char *topic);

#endif

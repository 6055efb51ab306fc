/*
 * mt_topic.h - topic names and subscription patterns.
 *
 * A topic is a '.'-separated name such as "order.eu.created" (an event's
 * `type`). A pattern matches topics as a RabbitMQ topic exchange does, so a
 * pattern means the same in moontide and in a RabbitMQ binding:
 *
 *   '*'   exactly one word        order.*.created   ~ order.eu.created
 *   '#'   zero or more words      order.#           ~ order, order.eu.created
 *   '>'   as the last word only, an alias of '#' (NATS style, "order.>").
 *         Unlike NATS, "order.>" also matches "order", as "order.#" does.
 *
 * Grammar, for names and patterns alike: one or more words separated by
 * single dots; a word is one or more bytes other than '.' and whitespace
 * (so no leading, trailing or doubled dot). A name holds no '*' or '#' at
 * all. In a pattern '*' and '#' may only be whole words, and a whole-word
 * '>' only the last word; a '>' inside a longer word is an ordinary byte,
 * as it is in a name (publishers may use it in a type). Words compare
 * byte for byte (case-sensitive).
 *
 * Matching is iterative with one backtrack point (the last '#'), so it
 * takes at most O(words in pattern x words in topic) steps whatever the
 * pattern ("#.#.#.#.a" against a long topic stays cheap), and there is no
 * limit on the number of words.
 *
 * Pure functions: no allocation, no global state, any thread.
 */
#ifndef MT_TOPIC_H
#define MT_TOPIC_H
#include <stdbool.h>
#include "mt_err.h"

/*
 * Decides whether 'topic' matches 'pattern'. Sets *match (false on error).
 * Returns MT_OK, or MT_EINVAL if a string is NULL or empty, the topic is
 * not a valid name (an empty word, whitespace, '*' or '#'), or the pattern
 * is not a valid pattern (an empty word, whitespace, a wildcard that is not
 * a whole word, '>' not last). Both are validated in full whatever the
 * outcome, so a bad pattern is MT_EINVAL against every topic.
 */
mt_err mt_topic_match(const char *pattern, const char *topic, bool *match);

/* MT_OK if 'pattern' is a valid pattern (grammar above), else MT_EINVAL (also for NULL). */
mt_err mt_topic_validate_pattern(const char *pattern);

/* MT_OK if 'topic' is a valid name: no wildcards, no empty words; else MT_EINVAL (also NULL). */
mt_err mt_topic_validate_name(const char *topic);

#endif

#include <ctype.h>
#include <stddef.h>
#include <string.h>
#include "mt_topic.h"

/*
 * Words are walked in place: a word is a pointer to its first byte and
 * ends at the next '.' or NUL. NULL stands for "past the last word".
 */

static size_t word_len(const char *w)
{
    return strcspn(w, ".");
}

/* The word after 'w', or NULL if 'w' is the last one. */
static const char *next_word(const char *w)
{
    const char *dot = strchr(w, '.');
    return dot ? dot + 1 : NULL;
}

static bool is_one(const char *w, char c)
{
    return w[0] == c && (w[1] == '.' || w[1] == '\0');
}

/* Only called on validated patterns, where a whole-word '>' is always last. */
static bool is_hash(const char *w)
{
    return is_one(w, '#') || is_one(w, '>');
}

static bool same_word(const char *a, const char *b)
{
    size_t n = word_len(a);
    return n == word_len(b) && memcmp(a, b, n) == 0;
}

static mt_err validate(const char *s, bool pattern)
{
    if (!s || !*s) {
        return MT_EINVAL;
    }
    for (const char *w = s; w; w = next_word(w)) {
        size_t n = word_len(w);
        if (n == 0) {
            return MT_EINVAL;
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char) w[i];
            if (isspace(c)) {
                return MT_EINVAL;
            }
            if ((c == '*' || c == '#') && (!pattern || n != 1)) {
                return MT_EINVAL;
            }
        }
        if (pattern && n == 1 && w[0] == '>' && w[1] != '\0') {
            return MT_EINVAL;
        }
    }
    return MT_OK;
}

mt_err mt_topic_validate_name(const char *topic)
{
    return validate(topic, false);
}

mt_err mt_topic_validate_pattern(const char *pattern)
{
    return validate(pattern, true);
}

mt_err mt_topic_match(const char *pattern, const char *topic, bool *match)
{
    *match = false;
    /*
     * Validate both in full before matching, rather than stopping at the
     * first mismatch: otherwise "a.b.*x" would be a quiet non-match against
     * "z" and an error against "a.b.c", and a bad pattern would surface
     * only when the right event came along.
     */
    if (validate(pattern, true) || validate(topic, false)) {
        return MT_EINVAL;
    }
    /*
     * Glob-style matching over words: every word other than '#' consumes
     * exactly one topic word, so on a dead end it is enough to let the most
     * recent '#' swallow one more word and retry from just after it; an
     * earlier '#' never needs revisiting, because anything it could absorb
     * the later one can absorb too.
     */
    const char *p = pattern, *t = topic;
    const char *hash_p = NULL; /* the last '#' seen, NULL = none */
    const char *hash_t = NULL; /* the first topic word that '#' has not swallowed */
    while (t) {
        if (p && is_hash(p)) {
            hash_p = p;
            hash_t = t;
            p = next_word(p);
        } else if (p && (is_one(p, '*') || same_word(p, t))) {
            p = next_word(p);
            t = next_word(t);
        } else if (hash_p) {
            hash_t = next_word(hash_t);
            t = hash_t;
            p = next_word(hash_p);
        } else {
            return MT_OK;
        }
    }
    while (p && is_hash(p)) {
        p = next_word(p);
    }
    *match = p == NULL;
    return MT_OK;
}

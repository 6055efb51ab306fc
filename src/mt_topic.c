#include <string.h>
#include "mt_topic.h"

#define MAX_WORDS 128

/* Splits 's' into word spans; returns the count, or -1 if a word is empty or too many. */
static int split(const char *s, const char **w, int *len)
{
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *dot = strchr(p, '.');
        int l = dot ? (int) (dot - p) : (int) strlen(p);
        if (l == 0 || n == MAX_WORDS) {
            return -1;
        }
        w[n] = p;
        len[n] = l;
        n++;
        if (!dot) {
            return n;
        }
        p = dot + 1;
    }
}

static bool is_word(const char *w, int len, char c)
{
    return len == 1 && w[0] == c;
}

static bool has_wild(const char *w, int len)
{
    for (int i = 0; i < len; i++) {
        if (w[i] == '*' || w[i] == '#' || w[i] == '>') {
            return true;
        }
    }
    return false;
}

mt_err mt_topic_validate_name(const char *topic)
{
    const char *w[MAX_WORDS];
    int len[MAX_WORDS];
    if (!topic || !*topic) {
        return MT_EINVAL;
    }
    int n = split(topic, w, len);
    for (int i = 0; i < n; i++) {
        if (has_wild(w[i], len[i])) {
            return MT_EINVAL;
        }
    }
    return n < 0 ? MT_EINVAL : MT_OK;
}

mt_err mt_topic_validate_pattern(const char *pattern)
{
    const char *w[MAX_WORDS];
    int len[MAX_WORDS];
    if (!pattern || !*pattern) {
        return MT_EINVAL;
    }
    int n = split(pattern, w, len);
    if (n < 0) {
        return MT_EINVAL;
    }
    for (int i = 0; i < n; i++) {
        bool whole = is_word(w[i], len[i], '*') || is_word(w[i], len[i], '#') ||
                     (is_word(w[i], len[i], '>') && i == n - 1);
        if (has_wild(w[i], len[i]) && !whole) {
            return MT_EINVAL;
        }
    }
    return MT_OK;
}

mt_err mt_topic_match(const char *pattern, const char *topic, bool *match)
{
    *match = false;
    const char *pw[MAX_WORDS], *tw[MAX_WORDS];
    int pl[MAX_WORDS], tl[MAX_WORDS];
    /* Both are validated in full first, so a bad pattern is always an error. */
    if (mt_topic_validate_pattern(pattern) || mt_topic_validate_name(topic)) {
        return MT_EINVAL;
    }
    int np = split(pattern, pw, pl);
    int nt = split(topic, tw, tl);
    /*
     * ok[j] after processing i pattern words: the first j topic words can be
     * matched by them. A table instead of backtracking keeps many '#' linear.
     */
    bool ok[MAX_WORDS + 1], next[MAX_WORDS + 1];
    memset(ok, 0, sizeof ok);
    ok[0] = true;
    for (int i = 0; i < np; i++) {
        bool hash = is_word(pw[i], pl[i], '#') || is_word(pw[i], pl[i], '>');
        bool star = is_word(pw[i], pl[i], '*');
        memset(next, 0, sizeof next);
        for (int j = 0; j <= nt; j++) {
            if (hash) {
                /* '#' takes zero words (ok[j]) or one more (next[j-1]). */
                next[j] = ok[j] || (j > 0 && next[j - 1]);
            } else if (j > 0 && ok[j - 1]) {
                next[j] = star || (pl[i] == tl[j - 1] && memcmp(pw[i], tw[j - 1], (size_t) pl[i]) == 0);
            }
        }
        memcpy(ok, next, sizeof ok);
    }
    *match = ok[nt];
    return MT_OK;
}

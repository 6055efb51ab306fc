/*
 * mt_filter.h - content filters of a subscription, in the CloudEvents
 * Subscriptions API dialects exact, prefix, suffix, all, any and not (the
 * sql dialect is not supported). A filter is compiled once from JSON (the
 * topology loader turns the YAML into JSON) and evaluated per event:
 *
 *   { "all": [ { "exact": { "data.currency": "EUR" } },
 *              { "prefix": { "subject": "order-" } },
 *              { "not": { "suffix": { "type": ".test" } } } ] }
 *
 * A filter expression is an object with exactly one key, its dialect:
 *
 *   exact, prefix, suffix   a non-empty object of attribute: string; every
 *                           pair must hold (several pairs are an implicit all)
 *   all, any                a non-empty array of filter expressions
 *   not                     one filter expression
 *
 * Nesting is limited to MT_FILTER_MAX_DEPTH levels.
 *
 * An attribute is one of
 *   - a CloudEvents attribute: id, source, type, subject, time,
 *     datacontenttype, dataschema, dataversion, specversion ("1.0"), and
 *     moontide's correlationid, causationid, traceparent, expirytime,
 *     deliverafter, replyto, priority (as a decimal, "0" to "9");
 *   - an extension attribute (a-z and 0-9, at most 20 bytes), looked up in
 *     the event's extension object (ev->attr[MT_ATTR_EXTENSIONS]);
 *   - "data.<path>": a '.'-separated path of object keys into JSON data,
 *     e.g. data.customer.tier. A word that is a decimal number (no leading
 *     zeros) indexes an array: data.items.0.sku. Keys holding '.' cannot be
 *     reached.
 * Names that can never hold a value are refused when compiling: "data"
 * without a path, an empty path word, names outside a-z0-9, and the engine
 * attributes sequence, streamversion and recordedtime.
 *
 * Comparison is case-sensitive, byte by byte, on the attribute's text:
 *   - a string: its value (without quotes);
 *   - an integer: its decimal text ("3", "-12");
 *   - a boolean: "true" or "false";
 *   - a real: its shortest text that reads back as the same double, laid
 *     out as Python's repr() does: 9.99 -> "9.99", 2.50 -> "2.5",
 *     3.0 -> "3.0", 1e3 -> "1000.0", 1e-7 -> "1e-07", 1e22 -> "1e+22".
 * So exact {"data.count": "3"} matches {"count": 3} and {"count": "3"}, but
 * not {"count": 3.0}. prefix/suffix use the same text, and an empty prefix
 * or suffix matches any attribute that has a value. An absent attribute,
 * null, an object or an array has no text and never matches (so under not,
 * it always does); nor does data.* when the data is not JSON (text, binary,
 * none, or unparseable).
 *
 * Compiled filters are immutable and evaluation keeps its state on the
 * stack: one filter may be evaluated from any number of threads at once.
 */
#ifndef MT_FILTER_H
#define MT_FILTER_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include "mt_err.h"
#include "mt_event.h"

#define MT_FILTER_MAX_DEPTH 16 /* levels of all/any/not, counting the outermost expression */
#define MT_FILTER_TEXT_MAX 48  /* bytes of the longest text of a number, with its NUL */

typedef struct mt_filter mt_filter;

/*
 * Compiles 'spec' (not kept; the filter copies what it needs). Sets *out
 * (NULL on error) to a filter the caller frees with mt_filter_free().
 * Returns MT_OK; MT_EINVAL if 'spec' is NULL or not a valid filter, with a
 * message naming the problem and where it is in the filter into 'err'
 * (errlen bytes, truncated; err may be NULL when errlen is 0), for example
 *   "all[1].prefix: expects an object of attribute: string"
 * (a problem with the whole filter has no place: "expects exactly one of
 * ..."); MT_ENOMEM (message "out of memory") if an allocation failed.
 *
 * A NUL byte is refused in a dialect or attribute name, and in a value
 * for anything but data.<path> (only strings in JSON data can hold one),
 * since such a condition could never hold.
 */
mt_err mt_filter_compile(const json_t *spec, mt_filter **out, char *err, size_t errlen);

/*
 * mt_filter_compile, also telling where in 'spec' the problem is: *at (if
 * 'at' is not NULL) is the value at fault, a node of 'spec' (NULL on
 * success, on MT_ENOMEM and for a NULL spec), and *at_key (if not NULL) is
 * true when the fault is the object key that names *at (an unknown
 * dialect, a bad attribute name) rather than *at itself.
 */
mt_err mt_filter_compile_at(const json_t *spec, mt_filter **out, char *err, size_t errlen,
                            const json_t **at, bool *at_key);

/*
 * The text a filter compares for JSON number or boolean 'v', as described
 * above ("3", "2.5", "1000.0", "true"), into 'buf' (MT_FILTER_TEXT_MAX
 * bytes, NUL-terminated). False, leaving buf alone, for other values.
 */
bool mt_filter_number_text(const json_t *v, char *buf);

/*
 * Evaluates 'f' on 'ev' (neither may be NULL). Sets *match. Parses the
 * event's JSON data at most once, and its extension object at most once,
 * and only if the filter asks for them; nothing outlives the call. Returns
 * MT_OK: data that is not JSON is a non-match, not an error.
 */
mt_err mt_filter_eval(const mt_filter *f, const mt_event *ev, bool *match);

/* Frees a compiled filter. mt_filter_free(NULL) does nothing. */
void mt_filter_free(mt_filter *f);

#endif

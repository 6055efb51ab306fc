/*
 * mt_filter.h - content filters of a subscription, in the CloudEvents
 * Subscriptions API dialects: exact, prefix, suffix, all, any, not.
 *
 *   { "all": [ { "exact": { "data.currency": "EUR" } },
 *              { "prefix": { "subject": "order-" } },
 *              { "not": { "suffix": { "type": ".test" } } } ] }
 *
 * exact/prefix/suffix take an object of attribute -> string; every pair
 * must hold. An attribute is a CloudEvents attribute (id, source, type,
 * subject, time, datacontenttype, dataschema, dataversion, correlationid,
 * causationid, traceparent, replyto, priority, or an extension) or
 * "data.<path>", a '.'-separated path into JSON data. Values compare as
 * text: a JSON string by its value, a number or boolean by its JSON text
 * (exact {"data.count": "3"} matches 3). An absent attribute, null, an
 * object or an array never matches; nor does data.* on data that is not
 * JSON. Compiled filters are immutable: evaluation is thread-safe.
 */
#ifndef MT_FILTER_H
#define MT_FILTER_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include "mt_err.h"
#include "mt_event.h"

typedef struct mt_filter mt_filter;

/*
 * Compiles 'spec'. Sets *out (NULL on error). MT_EINVAL with a message
 * naming the problem and where ("filter.all[1].prefix: ...") in err.
 */
mt_err mt_filter_compile(const json_t *spec, mt_filter **out, char *err, size_t errlen);

/* Evaluates 'f' on 'ev'. Sets *match. Parses JSON data at most once. */
mt_err mt_filter_eval(const mt_filter *f, const mt_event *ev, bool *match);

void mt_filter_free(mt_filter *f);

#endif

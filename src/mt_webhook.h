/*
 * mt_webhook.h - webhook delivery: subscriptions declared with
 * `deliver: { webhook: { url, secret, concurrency } }`.
 *
 * A webhook subscription is a pull subscription whose consumer is the
 * engine: it leases events (mt_subs_pull) for its free connection slots,
 * POSTs each as a structured CloudEvent signed per the Standard Webhooks
 * spec (webhook-id, webhook-timestamp, webhook-signature: v1,<base64
 * HMAC-SHA256 of "id.timestamp.body"> keyed by the base64 part of
 * whsec_...), and settles the lease from the answer: 2xx acks; 429, 5xx, a
 * timeout or a connection error nack with the Retry-After delay or the
 * subscription's backoff (so retries and the dead-letter queue work as for
 * handlers); 410 pauses the subscription. At most `concurrency` requests are
 * in flight per endpoint; the subscription's ordering lanes keep each
 * subject's events in order across them. Runs on the loop thread.
 */
#ifndef MT_WEBHOOK_H
#define MT_WEBHOOK_H
#include "mt_err.h"
#include "mt_loop.h"
#include "mt_sub.h"
#include "mt_topo.h"

typedef struct mt_webhooks mt_webhooks;

/*
 * Starts delivery for every webhook subscription of 'subs' (borrowed; must
 * outlive it). Sets *out. MT_ECONFIG with a message in err for an unusable
 * URL or secret.
 */
mt_err mt_webhooks_open(mt_loop *loop, mt_subs *subs, mt_webhooks **out, char *err, size_t errlen);

/*
 * Subscription 'name' was created, replaced ('conf' its new definition) or
 * deleted ('conf' NULL) at runtime: requests in flight finish, and delivery
 * goes on with the new definition, if it is a webhook. An unusable URL or
 * secret is logged.
 */
void mt_webhooks_update(mt_webhooks *w, const char *name, const mt_sub_conf *conf);

/* New events may be there: fill free slots. */
void mt_webhooks_kick(mt_webhooks *w);

/* Stops starting requests (those in flight are abandoned: their leases expire). */
void mt_webhooks_stop(mt_webhooks *w);

/* Frees everything. Call after the store is closed. NULL does nothing. */
void mt_webhooks_close(mt_webhooks *w);

/*
 * Whether 'url' is one a webhook can POST to: http, a host, a port from 1
 * to 65535 if given. MT_EINVAL with why in err if not.
 */
mt_err mt_webhook_check_url(const char *url, char *err, size_t errlen);

/*
 * Decodes a secret of the form whsec_<base64> into key (cap bytes): the
 * key's length (at least 1), or -1 if the secret is not of that form or
 * its key is longer than cap.
 */
int mt_webhook_secret_key(const char *secret, unsigned char *key, size_t cap);

#endif

-- Asks for payment of every euro order: emits payment.requested, which
-- carries the order's correlation id, with the order as its subject.
return function(event, ctx)
  local order = event.data
  ctx.emit("payment.requested", {
    order = event.subject,
    amount_cents = order.total_cents,
    currency = order.currency,
  })
  ctx.log.info("payment requested for", event.subject)
end

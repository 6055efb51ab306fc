-- Emits one event per input and records what it did.
return {
  handle = function(event, ctx)
    local seq = ctx.emit("order.confirmed", { order = event.subject, n = event.data.n,
                                              big = 9223372036854775807 })
    ctx.kv("emitted"):put(event.id, seq)
    ctx.log.info("confirmed", event.subject)
  end,
}

-- Emits one event per event handled, the shape of a projection's or a saga's
-- step (out.* is outside the benchmark's bench.# subscriptions).
return function(event, ctx)
  ctx.emit("out.counted", { n = event.data.n })
end

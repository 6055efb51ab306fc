-- Records every delivered event by id.
return function(event, ctx)
  ctx.kv("seen"):put(event.id, event.sequence)
end

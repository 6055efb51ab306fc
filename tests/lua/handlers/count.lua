-- Counts events per subject and checks they arrive in stream order.
return function(event, ctx)
  local counts = ctx.kv("counts")
  local last = ctx.kv("last_version")
  local prev = last:get(event.subject)
  if prev ~= nil and event.streamversion ~= prev + 1 then
    error(string.format("out of order: %s got %d after %d", event.subject, event.streamversion, prev))
  end
  last:put(event.subject, event.streamversion)
  counts:put(event.subject, (counts:get(event.subject) or 0) + 1)
end

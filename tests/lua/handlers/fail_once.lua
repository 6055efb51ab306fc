-- Fails the first attempt of events marked {"fail": true}; checks and counts
-- every subject's events in stream order.
return function(event, ctx)
  if event.data and event.data.fail and event.attempt == 1 then
    error("failing once on purpose")
  end
  local last = ctx.kv("last_version")
  local prev = last:get(event.subject)
  if prev ~= nil and event.streamversion ~= prev + 1 then
    error(string.format("out of order: %s got %d after %d", event.subject, event.streamversion, prev))
  end
  last:put(event.subject, event.streamversion)
  local counts = ctx.kv("counts")
  counts:put(event.subject, (counts:get(event.subject) or 0) + 1)
end

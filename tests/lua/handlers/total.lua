-- Counts every event in one shared key and per subject: handlers of
-- different subjects write the same key, so workers running ahead conflict.
return function(event, ctx)
  local t = ctx.kv("totals")
  t:put("all", (t:get("all") or 0) + 1)
  t:put(event.subject, (t:get(event.subject) or 0) + 1)
  if event.data and event.data.fail and event.attempt == 1 then
    error("failing once on purpose")
  end
end

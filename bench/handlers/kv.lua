-- Updates a per-subject counter: one kv read and one kv write per event.
return function(event, ctx)
  local t = ctx.kv("bench_counts")
  t:put(event.subject, (t:get(event.subject) or 0) + 1)
end

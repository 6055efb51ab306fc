-- As probe_kv.lua, but each subscription counts in a table of its own
-- ("bench_counts_" .. its name), as separate read models do: four such
-- subscriptions with `workers` run ahead on their workers without reading
-- one another's writes (sharing one table, every run ahead would find its
-- counter changed by another subscription and run again on the writer).

return function(event, ctx)
  local t = ctx.kv("bench_counts_" .. ctx.subscription)
  t:put(event.subject, (t:get(event.subject) or 0) + 1)
  local d = event.data
  if d.probe then
    ctx.emit("receipt.kv", { k = d.k, pubns = d.pubns, appended = event.recordedtime })
  end
end

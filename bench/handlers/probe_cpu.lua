-- As probe_kv_own.lua, plus about 60 microseconds of pure Lua work per
-- event (a handler that computes something, rather than only storing): the
-- case `workers` is for, where runs in parallel can beat one writer.
return function(event, ctx)
  local h = 0
  for i = 1, 1500 do
    h = (h * 31 + i) % 1000003
  end
  local t = ctx.kv("bench_cpu_" .. ctx.subscription)
  t:put(event.subject, (t:get(event.subject) or 0) + 1)
  local d = event.data
  if d.probe then
    ctx.emit("receipt.kv", { k = d.k, pubns = d.pubns, appended = event.recordedtime, h = h })
  end
end

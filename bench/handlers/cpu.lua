-- About 60 microseconds of pure Lua work per event, then one kv read and
-- write (a handler that computes something rather than only storing it):
-- the case `workers` is for, runs in parallel across subjects.
return function(event, ctx)
  local h = 0
  for i = 1, 1500 do
    h = (h * 31 + i) % 1000003
  end
  local t = ctx.kv("bench_cpu_" .. ctx.subscription)
  t:put(event.subject, (t:get(event.subject) or 0) + h % 2 + 1)
end

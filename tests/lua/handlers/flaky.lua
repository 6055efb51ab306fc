-- Fails the first two attempts of every event, succeeds on the third.
return function(event, ctx)
  if event.attempt < 3 then
    error("flaky: attempt " .. event.attempt)
  end
  ctx.kv("flaky"):put(event.id, event.attempt)
end

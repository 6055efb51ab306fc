-- ctx.schedule at times no event can carry: each call must raise a Lua
-- error (caught here, kept in kv "far"), never stop the engine.
return function(event, ctx)
  local t = ctx.kv("far")
  local whens = { 253402300799999, math.maxinteger, "100000000h", "1960-01-01T00:00:00Z" }
  for i, when in ipairs(whens) do
    local ok, err = pcall(ctx.schedule, when, "t.far", { i = i })
    t:put(tostring(i), ok and "ok" or err)
  end
end

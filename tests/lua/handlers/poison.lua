-- Misbehaves on request, in the ways a handler can go wrong.
return function(event, ctx)
  local d = event.data
  if d.kind == "loop" then
    while true do end
  elseif d.kind == "bomb" then
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
  elseif d.kind == "pcall_loop" then
    pcall(function() while true do end end)
  elseif d.kind == "backtrack" then
    -- One call of a C function: no instruction count stops it, only limits.time.
    string.rep("a", 3000):find(string.rep("a*", 12) .. "b")
  elseif d.kind == "huge" then
    error(string.rep("E", 100000), 0)
  elseif d.kind == "huge_reject" then
    ctx.reject(string.rep("R", 100000))
  elseif d.kind == "reject" then
    ctx.reject("not for us")
  elseif d.kind == "reject_bare" then
    ctx.reject()
  end
  -- A malformed payload: amount must be a number.
  local total = d.amount * 2
  ctx.kv("ok"):put(event.subject .. "/" .. event.id, total)
end

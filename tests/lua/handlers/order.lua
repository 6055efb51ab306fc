-- Appends each delivered event's id to one list, so a test sees the delivery order.
return function(event, ctx)
  local t = ctx.kv("order")
  local list = t:get("all") or {}
  list[#list + 1] = event.id
  t:put("all", list)
end

-- Always fails: stands for a handler with a bug.
return function(event, ctx)
  local order = nil
  return order.total
end

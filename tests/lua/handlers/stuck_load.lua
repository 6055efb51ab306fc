-- Its top-level code never finishes: one C call that backtracks for hours.
local hit = string.rep("a", 3000):find(string.rep("a*", 12) .. "b")
return function(event, ctx) end

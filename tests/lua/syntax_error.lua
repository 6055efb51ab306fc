-- A handler with a typo on line 3.
local total, count = 0, 0
total, count x = 1, 2
return function() return total + count end

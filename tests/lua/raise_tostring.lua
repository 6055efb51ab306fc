-- Fails with a table error value that knows how to print itself.
local Err = {}
Err.__tostring = function(e) return "custom: " .. e.code end
return function()
    error(setmetatable({ code = "E1" }, Err))
end

-- A module found through the configured module paths.
local M = {}

function M.hello(name)
    return "hello " .. name
end

return M

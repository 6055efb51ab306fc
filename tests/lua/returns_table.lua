-- A handler module: a table with 'handle' plus fields for later use.
local M = { name = "counter" }

function M.handle(ev)
    return ev.n + 1
end

function M.project(state, ev)
    return state
end

return M

-- Grows until the memory limit stops it; "ok" for any other kind.
return function(kind)
    if kind == "string" then
        local s = "x"
        while true do
            s = s .. s
        end
    elseif kind == "table" then
        local t, i = {}, 0
        while true do
            i = i + 1
            t[i] = { i }
        end
    elseif kind == "rep" then
        return string.rep("x", 1 << 30)
    elseif kind == "caught" then
        -- catches the memory error, then raises it again as a plain error
        local _, err = pcall(string.rep, "x", 1 << 30)
        error(err, 0)
    elseif kind == "swallowed" then
        -- catches it and returns as if nothing happened: the run fails all the same
        local ok = pcall(function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100) .. i end end)
        return "survived " .. tostring(ok)
    elseif kind == "xswallowed" then
        local ok = xpcall(function() return pcall(string.rep, "x", 1 << 30) end,
                          function(m) return m end)
        return "survived " .. tostring(ok)
    elseif kind == "pcall" then
        -- pcall and xpcall still work as Lua's for other errors
        local ok, err = pcall(error, { code = 7 })
        assert(not ok and err.code == 7)
        local a, b, c = pcall(function(x, y) return x + y, "two" end, 1, 2)
        assert(a == true and b == 3 and c == "two")
        ok, err = xpcall(function(x) error("bad " .. x, 0) end, function(m) return "handled: " .. m end, "arg")
        assert(not ok and err == "handled: bad arg", err)
        a, b = xpcall(function(...) return select("#", ...) end, print, nil, nil)
        assert(a == true and b == 2)
        assert(not pcall(xpcall, function() end))
    end
    return "ok"
end

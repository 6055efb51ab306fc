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
    end
    return "ok"
end

-- Tries to survive the instruction budget by catching its error and carrying on.
return function()
    local ok, err = pcall(function()
        while true do end
    end)
    local caught = 0
    for _ = 1, 10 do
        if not pcall(function() while true do end end) then
            caught = caught + 1
        end
    end
    return "survived", ok, err, caught
end

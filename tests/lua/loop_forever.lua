-- Spins until the instruction budget stops it, unless told to stop.
return function(ev)
    if ev == "stop" then
        return "stopped"
    end
    local n = 0
    while true do
        n = n + 1
    end
end

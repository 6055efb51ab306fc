-- Does a fixed amount of work: about two instructions per step.
return function(n)
    local sum = 0
    for i = 1, n do
        sum = sum + i
    end
    return sum
end

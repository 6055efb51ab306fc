-- Fails the first time it is loaded and works the second.
flaky_attempts = (flaky_attempts or 0) + 1
if flaky_attempts == 1 then
    error("flaky: first load fails")
end
return { attempts = flaky_attempts }

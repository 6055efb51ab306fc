-- Requires loop_a while loop_a is still loading.
local a = require("loop_a")
return { a = a }

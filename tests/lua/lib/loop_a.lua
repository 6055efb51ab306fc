-- Requires loop_b, which requires this module again.
local b = require("loop_b")
return { b = b }

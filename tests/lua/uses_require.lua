-- Uses modules from the configured paths and the built-in JSON module.
local greeting = require("greeting")
local strings = require("util.strings")
local json = require("moontide.json")

return function(name)
    return greeting.hello(strings.upper(name)), json.encode({ n = 1, list = json.array() })
end

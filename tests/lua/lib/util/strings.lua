-- A nested module: require("util.strings").
return { upper = string.upper }

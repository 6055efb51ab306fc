return function(event, ctx) end

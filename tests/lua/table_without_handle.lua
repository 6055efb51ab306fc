-- Wrong: the table has no 'handle' function.
return { project = function() end }

-- Wrong: a handler file must return a function or a table with 'handle'.
return 42

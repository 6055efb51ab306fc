-- Fails with a table error value, as handlers do for structured errors.
return function()
    error({ code = "E_STOCK", message = "out of stock", sku = 42 })
end

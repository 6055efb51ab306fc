-- Answers quote requests: a request/reply responder (not those marked silent).
return function(event, ctx)
  if event.data.silent then
    return
  end
  ctx.reply({ price = event.data.qty * 7, item = event.data.item })
end

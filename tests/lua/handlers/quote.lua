-- Answers quote requests: a request/reply responder.
return function(event, ctx)
  ctx.reply({ price = event.data.qty * 7, item = event.data.item })
end

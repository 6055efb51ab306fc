-- Logs far more than one run may (ctx.log and print), or one very long line.
return function(event, ctx)
  local kind = event.data.kind
  if kind == "loop" then
    for i = 1, 5000 do ctx.log.info("line", i) end
  elseif kind == "print" then
    for i = 1, 5000 do print("p", i) end
  elseif kind == "long" then
    ctx.log.warn(string.rep("\u{e9}", 20000)) -- 40,000 bytes of two-byte characters
  end
  ctx.kv("chatty"):put(event.subject, kind)
end

-- Counts events per subject and, for those whose data asks, emits a notice
-- after counting ("notify") or before ("early"): a run ahead on a worker
-- cannot emit (the sequence is the writer's), so those run again on the
-- writer; the rest need not, whichever side of the count the emit was.
return function(event, ctx)
  local d = event.data or {}
  if d.early then
    ctx.emit("notice.counted", { subject = event.subject })
  end
  local counts = ctx.kv("counts")
  counts:put(event.subject, (counts:get(event.subject) or 0) + 1)
  if d.notify then
    ctx.emit("notice.counted", { subject = event.subject })
  end
end

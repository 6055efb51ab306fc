-- Counts events per subject and, for those whose data asks, emits a notice
-- after counting: a run ahead on a worker cannot emit (the sequence is the
-- writer's), so those run again on the writer; the rest need not.
return function(event, ctx)
  local counts = ctx.kv("counts")
  counts:put(event.subject, (counts:get(event.subject) or 0) + 1)
  if event.data and event.data.notify then
    ctx.emit("notice.counted", { subject = event.subject })
  end
end

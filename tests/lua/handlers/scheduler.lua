-- Schedules a reminder 1.5 s after each order's time.
return function(event, ctx)
  ctx.schedule(1500, "t.reminder", { order = event.subject })
end

-- bench/handlers/empty.lua plus a probe receipt: for the events whose data
-- carries "probe": true (about 1%, chosen by the publisher) it emits
-- receipt.empty with the publisher's timestamp. The receipt commits in the
-- same transaction as the handler's effects, so its arrival over SSE times
-- publish -> effects committed (bench/live.sh); "appended", the event's
-- recordedtime, lets the tool split that time in stages.
return function(event, ctx)
  local d = event.data
  if d.probe then
    ctx.emit("receipt.empty", { k = d.k, pubns = d.pubns, appended = event.recordedtime })
  end
end

-- Re-emits each event as fired.due with the same data: bench/delivery.sh reads
-- the re-emitted events over SSE to time when a deliverafter embargo ended.
return function(event, ctx)
  ctx.emit("fired.due", event.data)
end

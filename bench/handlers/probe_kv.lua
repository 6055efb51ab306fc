-- bench/handlers/kv.lua (one kv read and one kv write per event) plus a probe
-- receipt: for the events whose data carries "probe": true (about 1%, chosen
-- by the publisher) it emits receipt.kv with the publisher's timestamp in the
-- same transaction as the kv write, so the receipt's arrival over SSE times
-- publish -> effects committed (bench/live.sh); "appended", the event's
-- recordedtime, lets the tool split that time in stages.
local kv = require("kv")

return function(event, ctx)
  kv(event, ctx)
  local d = event.data
  if d.probe then
    ctx.emit("receipt.kv", { k = d.k, pubns = d.pubns, appended = event.recordedtime })
  end
end

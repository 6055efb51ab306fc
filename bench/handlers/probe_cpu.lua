-- bench/handlers/cpu.lua (about 60 microseconds of pure Lua work, then one
-- kv read and write in a table of the subscription's own) plus a probe
-- receipt, as probe_kv.lua has: the case `workers` is for, where runs in
-- parallel can beat one writer.
local cpu = require("cpu")

return function(event, ctx)
  cpu(event, ctx)
  local d = event.data
  if d.probe then
    ctx.emit("receipt.kv", { k = d.k, pubns = d.pubns, appended = event.recordedtime })
  end
end

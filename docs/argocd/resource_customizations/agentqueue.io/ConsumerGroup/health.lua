-- Argo CD health of an agentqueue.io ConsumerGroup, from the conditions the operator writes.
-- Healthy: Ready=True for the current generation. Suspended: paused in the spec (the
-- circuit breaker). Degraded: Ready=False for a reason that needs a person (scale target
-- missing, Redis trouble, an HPA or KEDA already scaling the workload), or
-- ScalingConflict=True. Progressing: no status yet, a newer generation not yet reconciled,
-- or Ready=False while waiting for its queue.
local hs = {status = "Progressing", message = "Waiting for the agentqueue operator"}

local function condition(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

-- Ready=False reasons that mean "on its way", not "broken".
local waiting = {Reconciling = true, QueueNotReady = true, Deleting = true}

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.message = "Deleting"
  return hs
end
local status = obj.status
if status == nil then
  return hs
end
local ready = condition(status.conditions, "Ready")
if ready == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Generation " .. generation .. " not reconciled yet"
  return hs
end

local paused = condition(status.conditions, "Paused")
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = "Paused: " .. (status.pausedReason or paused.message or "")
  return hs
end
if ready.status == "True" then
  local conflict = condition(status.conditions, "ScalingConflict")
  if conflict ~= nil and conflict.status == "True" then
    hs.status = "Degraded"
    hs.message = describe(conflict)
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
if ready.status == "False" and not waiting[ready.reason] then
  hs.status = "Degraded"
end
hs.message = describe(ready)
return hs

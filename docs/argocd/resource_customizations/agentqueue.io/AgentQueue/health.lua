-- Argo CD health of an agentqueue.io AgentQueue, from the conditions the operator writes.
-- Healthy: Ready=True for the current generation. Degraded: Ready=False for a reason that
-- needs a person (bad spec, Redis unreachable or refusing the login, missing Secret), or a
-- Degraded / SLOBreached / RedisConfigRisk condition. Progressing: no status yet, a newer generation not yet
-- reconciled, or Ready=False while the operator is still working.
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
local waiting = {Reconciling = true, Deleting = true}

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

if ready.status == "True" then
  local degraded = condition(status.conditions, "Degraded")
  if degraded ~= nil and degraded.status == "True" then
    hs.status = "Degraded"
    hs.message = describe(degraded)
    return hs
  end
  local slo = condition(status.conditions, "SLOBreached")
  if slo ~= nil and slo.status == "True" then
    hs.status = "Degraded"
    hs.message = "SLO breached: " .. describe(slo)
    return hs
  end
  local risk = condition(status.conditions, "RedisConfigRisk")
  if risk ~= nil and risk.status == "True" then
    hs.status = "Degraded"
    hs.message = "Redis configured to lose data: " .. describe(risk)
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

-- Argo CD health check for onnxship.io/ModelDeployment (Lua 5.1, as Argo CD runs it).
--   Healthy      phase Ready: the stable revision serves all traffic
--   Progressing  the operator has not seen this generation yet; Pending, Compressing, Progressing
--   Suspended    phase Paused: a pause without duration, or an inconclusive analysis, waits
--                for `kubectl onnxship promote | resume | abort`
--   Degraded     phase Degraded (failed compression or accuracy gate, invalid spec, store down,
--                a canary rolled back by the analysis or aborted), or a Degraded condition
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function canary_summary(status)
  local parts = {}
  if status.stableRevision ~= nil and status.stableRevision ~= "" then
    table.insert(parts, "stable " .. status.stableRevision)
  end
  if status.canaryRevision ~= nil and status.canaryRevision ~= "" then
    table.insert(parts, "canary " .. status.canaryRevision .. " at " .. tostring(status.canaryWeight or 0) .. "%")
  end
  return table.concat(parts, ", ")
end

local function message(status, fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the onnxship operator to take up this ModelDeployment"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the onnxship operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase or ""
local degraded = condition(status, "Degraded")

if phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  local why = ""
  if degraded ~= nil and degraded.reason ~= nil and degraded.reason ~= "" then
    why = degraded.reason .. ": "
  end
  hs.message = why .. message(status, "ModelDeployment is degraded")
  return hs
end

if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = message(status, canary_summary(status) .. " (paused)")
  return hs
end

if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = message(status, canary_summary(status))
  return hs
end

if phase == "Pending" or phase == "Compressing" or phase == "Progressing" or phase == "" then
  hs.status = "Progressing"
  hs.message = message(status, phase)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. phase
return hs

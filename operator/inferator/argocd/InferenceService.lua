-- Argo CD health for inferator.dev/InferenceService.
-- Healthy only when the operator has seen this generation and the Ready condition is True.
hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Inferator operator to report"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet observed generation " .. tostring(generation)
  return hs
end
local ready = nil
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "No Ready condition yet"
  return hs
end
local message = (ready.reason or "") .. ": " .. (ready.message or "")
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end
-- Reasons that will not heal by waiting: the user has to change something.
local degraded = {
  InvalidSpec = true,
  NoCompatibleProfile = true,
  UnsupportedModel = true,
  AutoscalerUnavailable = true,
  RuntimeRefused = true,
  CacheNotFound = true,
  CacheFailed = true,
}
if degraded[ready.reason] or obj.status.phase == "Failed" or obj.status.phase == "Degraded" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs

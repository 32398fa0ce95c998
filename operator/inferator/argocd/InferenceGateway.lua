-- Argo CD health for inferator.dev/InferenceGateway.
-- Healthy when the operator has seen this generation and a gateway replica is Ready.
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
hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.reason == "InvalidSpec" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs

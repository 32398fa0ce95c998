-- Argo CD health for inferator.dev/ModelCache.
-- Healthy once the weights are verified on the volume; Degraded when the prefetch failed.
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
local message = ""
if ready ~= nil then
  message = (ready.reason or "") .. ": " .. (ready.message or "")
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
elseif obj.status.phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
  local progress = obj.status.progress
  if progress ~= nil and progress.bytesTotal ~= nil and progress.bytesTotal > 0 then
    message = message .. string.format(" (%.1f of %.1f GiB)", progress.bytesDone / 1073741824, progress.bytesTotal / 1073741824)
  end
end
hs.message = message
return hs

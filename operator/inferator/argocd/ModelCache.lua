-- Argo CD health for inferator.dev/ModelCache.
-- Healthy once the weights are verified on the volume; Degraded when the prefetch failed.
-- Argo CD opens only the base, table and package libraries: no string.format or math.floor.
-- Bytes as GiB with one decimal (rounded down), from arithmetic alone.
local function gib(bytes)
  local tenths = bytes * 10 / 1073741824
  tenths = tenths - tenths % 1
  local digits = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}
  local fraction = digits[tenths % 10 + 1]
  local whole = (tenths - tenths % 10) / 10
  local text = ""
  repeat
    local digit = whole % 10
    text = digits[digit + 1] .. text
    whole = (whole - digit) / 10
  until whole < 1
  return text .. "." .. fraction
end

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
    message = message .. " (" .. gib(progress.bytesDone or 0) .. " of " .. gib(progress.bytesTotal) .. " GiB)"
  end
end
hs.message = message
return hs

-- Records one finished attempt in the stats hash:
-- KEYS[1] = stats key; ARGV = duration ms, now ms, half-life ms, outcome (`completed`|`failed`).
-- The average and the histogram decay with the half-life so they follow the current load.
local key = KEYS[1]
local d = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local half = tonumber(ARGV[3])
redis.call('HINCRBY', key, ARGV[4], 1)
local prev = redis.call('HMGET', key, 'ewma_ms', 'updated_ms')
local ewma = tonumber(prev[1])
local updated = tonumber(prev[2])
local decay = 1.0
if updated then
  local dt = now - updated
  if dt < 0 then dt = 0 end
  decay = math.pow(0.5, dt / half)
end
if ewma == nil then
  ewma = d
else
  -- weight of the new sample grows with the time since the last one, at least 5%
  local w = 1.0 - decay
  if w < 0.05 then w = 0.05 end
  ewma = ewma * (1.0 - w) + d * w
end
-- `DURATION_BUCKETS_MS` of stats.rs (the tests compare them)
local bounds = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}
local idx = #bounds
for i, b in ipairs(bounds) do
  if d <= b then idx = i - 1 break end
end
if decay < 0.999 then
  for i = 0, #bounds - 1 do
    local v = tonumber(redis.call('HGET', key, 'h' .. i))
    if v then redis.call('HSET', key, 'h' .. i, tostring(v * decay)) end
  end
  redis.call('HSET', key, 'updated_ms', now)
elseif updated == nil then
  redis.call('HSET', key, 'updated_ms', now)
end
redis.call('HINCRBYFLOAT', key, 'h' .. idx, 1)
redis.call('HSET', key, 'ewma_ms', tostring(ewma))
return 1

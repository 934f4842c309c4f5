-- Records one finished attempt in the stats hash:
-- KEYS[1] = stats key; ARGV = duration ms, now ms, half-life ms, outcome (`completed`|`failed`).
-- The average and the histogram decay with the half-life so they follow the current load.
local key = KEYS[1]
local d = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local half = tonumber(ARGV[3])
redis.call('HINCRBY', key, ARGV[4], 1)
local prev = redis.call('HMGET', key, 'ewma_ms', 'updated_ms', 'dsum_ms', 'dcount')
local ewma = tonumber(prev[1])
local updated = tonumber(prev[2])
local sum = tonumber(prev[3])
local count = tonumber(prev[4])
local decay = 1.0
if updated then
  local dt = now - updated
  if dt < 0 then dt = 0 end
  decay = math.pow(0.5, dt / half)
end
-- the average is a time-decayed mean: every attempt weighs the same when it finishes, and
-- its weight halves every half-life (a plain moving average would follow the last few
-- finishers, which after a burst are the longest tasks)
if sum == nil or count == nil or count <= 0 then
  -- first attempt, or a hash written before the decayed sums: start from the old average
  if ewma == nil then sum, count = 0.0, 0.0 else sum, count = ewma, 1.0 end
end
if decay < 0.999 then
  sum = sum * decay
  count = count * decay
end
sum = sum + d
count = count + 1.0
ewma = sum / count
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
redis.call('HSET', key, 'ewma_ms', tostring(ewma), 'dsum_ms', tostring(sum), 'dcount', tostring(count))
return 1

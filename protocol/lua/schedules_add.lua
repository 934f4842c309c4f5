-- Lua: add or replace registry entries. KEYS[1] = registry hash, KEYS[2] = per-period key (both
-- in the queue's hash tag: one slot on Redis Cluster); ARGV = (id, stored JSON, per-minute)
-- triples. The per-period key changes by exactly the difference, in the same script. The
-- caller has added the queue to the namespace's registry queues set before (`SADD`, another
-- slot), so the beat finds every registry this script fills.
local delta = 0
for i = 1, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, dec = pcall(cjson.decode, old)
    if ok and type(dec) == 'table' and tonumber(dec.per_minute) then delta = delta - tonumber(dec.per_minute) end
  end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  delta = delta + tonumber(ARGV[i + 2])
end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[2], string.format('%.9f', delta)))
-- keep it short and exact-looking: 6 decimals at most, "30000" rather than "30000.000000"
local txt = string.format('%.6f', v):gsub('0+$', ''):gsub('%.$', '')
if txt == '-0' or math.abs(v) < 1e-6 then txt = '0' end
redis.call('SET', KEYS[2], txt)
return redis.call('HLEN', KEYS[1])

-- Lua: remove registry entries. KEYS as in add; ARGV = ids. Returns the count removed. The
-- queue stays in the registry queues set even when its registry is now empty (a removal there
-- racing an add, whose SADD runs before its script, would hide the added registry from the
-- beat); the beat skips members whose registry is empty.
local delta = 0
local n = 0
for i = 1, #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, dec = pcall(cjson.decode, old)
    if ok and type(dec) == 'table' and tonumber(dec.per_minute) then delta = delta - tonumber(dec.per_minute) end
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[2], string.format('%.9f', delta)))
-- keep it short and exact-looking: 6 decimals at most, "30000" rather than "30000.000000"
local txt = string.format('%.6f', v):gsub('0+$', ''):gsub('%.$', '')
if txt == '-0' or math.abs(v) < 1e-6 then txt = '0' end
redis.call('SET', KEYS[2], txt)
return n

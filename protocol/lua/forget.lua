-- KEYS[1] = workers zset, KEYS[2] = in-flight, KEYS[3] = worker hash; ARGV = slot, cutoff ms.
-- Forgets a dead slot once its in-flight list is empty and its heartbeat is still old.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > tonumber(ARGV[2]) then return 0 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
return 1

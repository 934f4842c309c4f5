-- KEYS[1] = workers zset, KEYS[2] = in-flight, KEYS[3] = worker hash; ARGV = slot, cutoff ms,
-- prefix. Forgets a dead slot once its in-flight list is empty and its heartbeat is still
-- old, and takes its in-flight list out of the running sets of the queues it served.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > tonumber(ARGV[2]) then return 0 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
local qs = redis.call('HGET', KEYS[3], 'queues')
if qs then
  for q in string.gmatch(qs, '[^,]+') do
    redis.call('ZREM', fs_k_running(ARGV[3], q), KEYS[2])
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
return 1

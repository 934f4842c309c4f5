-- Lua: sample the running tasks of a queue into a minute's counts. KEYS[1] = the `started`
-- status index, KEYS[2] = the counts hash; ARGV[1] = its TTL (ms). Returns the count.
local n = redis.call('ZCARD', KEYS[1])
redis.call('HSET', KEYS[2], 'executing', n)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return n

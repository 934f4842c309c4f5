-- Give up the beat lease when the caller holds it. KEYS[1] = lease; ARGV = lease value.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

-- KEYS[1] = worker registry (`Keys::slots`, layout 2), KEYS[2] = the slot's worker hash;
-- ARGV = slot, cutoff ms. Forgets a dead slot if its heartbeat is still old (a slot that
-- came back is kept). One hash slot (the namespace's). The reaper calls it after putting back
-- and releasing the slot's in-flight lists (each in its queue's hash slot). Returns 1 when
-- forgotten.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1

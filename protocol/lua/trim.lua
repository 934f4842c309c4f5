-- Trims the records of a queue. KEYS[1] = the time index earlier versions wrote (no longer
-- written nor read: deleted); ARGV = prefix, queue, now ms, budget. Returns the count removed.
local P, q = ARGV[1], ARGV[2]
redis.call('UNLINK', KEYS[1])
return fs_trim(P, q, tonumber(ARGV[3]), fs_cfg(P, q), tonumber(ARGV[4]))

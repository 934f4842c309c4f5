-- Trims the records of a queue. KEYS[1] = the time index earlier versions wrote (no longer
-- written nor read: deleted); ARGV = prefix, queue, now ms, budget. Returns the count removed.
-- The queue's index keys and every victim's record are probed before anything is deleted
-- (`TRYAGAIN`, nothing deleted, while the queue's slot migrates).
local P, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local err = fs_local_tasks(P, q, now, {}, {})
if err then return err end
local n, e = fs_trim(P, q, now, fs_cfg(P, q), tonumber(ARGV[4]), true)
if e then return e end
redis.call('UNLINK', KEYS[1])
return n

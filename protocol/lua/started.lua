-- Records an attempt as started, if it is still in flight (a finish that got there first
-- has written the final record). KEYS[1] = in-flight list (`Keys::inflight_q`); ARGV = prefix, task, slot,
-- started ms. Returns 1 when recorded.
-- A key of the record not on this node (the queue's slot migrating): `TRYAGAIN`, nothing
-- written. Re-sent (its reply lost): recorded once.
if not redis.call('LPOS', KEYS[1], ARGV[2]) then return 0 end
local err = fs_started(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
if err then return err end
return 1

-- KEYS[1] = waiting list of the destination queue (`Keys::queue`), KEYS[2] = its stats,
-- KEYS[3] = the delivery's forward marker (`Keys::fwd_marker`); all in the destination's slot.
-- ARGV = prefix, destination queue, delivery id, func, envelope, now ms.
-- Delivers one `ForwardItem` of a queue's outbox: enqueues the envelope with its record unless
-- the marker says it already was (a delivery re-sent because its settle in the source queue's
-- outbox was lost), so each delivery enqueues exactly once within the marker's 24 h. Returns 1
-- when it enqueued, 0 when it had been. The record keys (undeclared) are probed first
-- (`fs_local`: `TRYAGAIN`, nothing written, while the destination's slot migrates).
local err = fs_local_tasks(ARGV[1], ARGV[2], tonumber(ARGV[6]), {ARGV[3]}, {ARGV[4]})
if err then return err end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', 86400000) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
fs_rec(ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'queued', tonumber(ARGV[6]), {'attempt', 0}, nil, false, nil, true)
return 1

-- KEYS[1] = waiting list of the destination queue (`Keys::queue`), KEYS[2] = its stats,
-- KEYS[3] = the delivery's forward marker (`Keys::fwd_marker`); all in the destination's slot.
-- ARGV = prefix, destination queue, delivery id, func, envelope, now ms.
-- Delivers one `ForwardItem` of a queue's outbox: enqueues the envelope with its record unless
-- the marker says this very staging already was (a delivery re-sent because its settle in the
-- source queue's outbox was lost). The marker is a set of the SHA-1s of the envelopes
-- delivered under this delivery id: another staging of the same id (a dead letter requeued
-- and failing again, a task id reused, another source queue's task of the same id) carries
-- another envelope (its staging time, its source task) and is enqueued. Each staging enqueues
-- once while its marker lives (24 h after the id's last delivery). Returns 1 when it
-- enqueued, 0 when it had been. The record keys (undeclared) are probed first (`fs_local`:
-- `TRYAGAIN`, nothing written, while the destination's slot migrates).
local err = fs_local_tasks(ARGV[1], ARGV[2], tonumber(ARGV[6]), {ARGV[3]}, {ARGV[4]})
if err then return err end
-- The marker is written after the push: a push Redis refuses (the destination's key holds
-- another type) leaves no marker, so the delivery is retried (and parked), not taken as made.
local sha = redis.sha1hex(ARGV[5])
if redis.call('SISMEMBER', KEYS[3], sha) == 1 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[3], sha)
redis.call('PEXPIRE', KEYS[3], 86400000)
redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
fs_rec(ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'queued', tonumber(ARGV[6]), {'attempt', 0}, nil, false, nil, true)
return 1

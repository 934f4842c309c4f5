-- KEYS[1] = delayed, KEYS[2] = queue; ARGV = now ms, limit. Moves due retries to the queue.
-- Not an arrival: the stats hash's `enqueued` counts what producers, the beat and
-- destinations enqueue; a retry was counted in `retried` when it was scheduled (and the
-- operator counts due retries as backlog already).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, v in ipairs(due) do
  redis.call('ZREM', KEYS[1], v)
  redis.call('LPUSH', KEYS[2], v)
end
return #due

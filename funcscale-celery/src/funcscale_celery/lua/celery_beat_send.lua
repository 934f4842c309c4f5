-- Celery beat under the funcscale beat lease (the `GuardedScheduler` of funcscale-celery): may
-- this beat send tick ARGV[3] of schedule entry ARGV[2]? KEYS[1] = the beat lease
-- (`Keys::beat_lease`), KEYS[2] = the ticks sent (`Keys::celery_beat_sent`: entry name -> last
-- sent tick, unix ms); ARGV = lease value (`<holder> <token>`, so the fencing token is
-- checked), entry name, tick (unix ms), lease TTL ms.
-- Returns -1 when the caller does not hold the lease (another beat took it), 0 when this tick of
-- the entry, or a later one, was already sent, else 1: the tick is recorded as sent and the
-- lease extended by the TTL, and the caller sends it. So a tick is sent at most once, however
-- the lease changes hands (a rollout, a split brain) and whatever each beat's own schedule state.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
if tonumber(ARGV[3]) <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1

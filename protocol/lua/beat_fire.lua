-- Lua: fire beat ticks of one queue. KEYS = last-fired hash, queue, stats (all in the queue's
-- hash tag: the script touches one slot); ARGV = fencing token, prefix, queue, now ms, then
-- (field, tick, envelope JSON, id, func) quintuples. The fence lives in the queue's slot, field
-- `_fence` of the last-fired hash: a token older than the stored one is refused (returns minus
-- the stored token, nothing written): a beat that lost the lease is stopped once the new holder
-- touched this queue, and learns the token to take next (`lease_acquire`'s minimum); else the
-- token is stored. A tick newer than the schedule's last fired one is pushed,
-- counted and recorded (status `queued`) exactly as enqueue.lua does; a tick at or before it
-- is skipped, whoever fires it, so no tick is enqueued twice (a re-sent call too). Returns the
-- ticks enqueued. Every record key it writes is probed first (`fs_local`: `TRYAGAIN`, nothing
-- written, while the queue's slot migrates).
local ids, funcs = {}, {}
for i = 5, #ARGV, 5 do ids[#ids + 1], funcs[#funcs + 1] = ARGV[i + 3], ARGV[i + 4] end
local err = fs_local_tasks(ARGV[2], ARGV[3], tonumber(ARGV[4]), ids, funcs)
if err then return err end
local token = tonumber(ARGV[1])
local fence = tonumber(redis.call('HGET', KEYS[1], '_fence') or '0')
if token < fence then return -fence end
if token > fence then redis.call('HSET', KEYS[1], '_fence', ARGV[1]) end
local P, q, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = 0
for i = 5, #ARGV, 5 do
  local last = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > last then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('LPUSH', KEYS[2], ARGV[i + 2])
    fs_rec(P, q, ARGV[i + 3], ARGV[i + 4], 'queued', now, {'attempt', 0, 'enqueued_ms', now}, nil, true, nil, true)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[3], 'enqueued', n)
  fs_count(P, q, now, 'submitted', n)
  fs_trim(P, q, now, fs_cfg(P, q), 2 * n)
end
return n

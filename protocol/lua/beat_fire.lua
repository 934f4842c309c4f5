-- Lua: fire beat ticks under the lease. KEYS = lease, last-fired hash, queue, stats; ARGV =
-- lease value, prefix, queue, now ms, lease TTL ms, then (field, tick, envelope JSON, id,
-- func) quintuples. A tick newer than the schedule's last fired one is pushed, counted and
-- recorded (status `queued`) exactly as enqueue.lua does. Returns -1 when the lease is not the
-- caller's; else the caller proved it holds the lease, which is extended by the TTL, so a
-- tick that takes longer to send than the lease lasts is not cut off half-way.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local P, q, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = 0
for i = 6, #ARGV, 5 do
  local last = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > last then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('LPUSH', KEYS[3], ARGV[i + 2])
    fs_rec(P, q, ARGV[i + 3], ARGV[i + 4], 'queued', now, {'attempt', 0, 'enqueued_ms', now}, nil, true, nil, true)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[4], 'enqueued', n)
  fs_count(P, q, now, 'submitted', n)
  fs_trim(P, q, now, fs_cfg(P, q), 2 * n)
end
return n

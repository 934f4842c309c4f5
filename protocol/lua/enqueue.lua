-- Lua: push envelopes, count them and record them (status `queued`), atomically.
-- KEYS[1] = queue, KEYS[2] = stats; ARGV = prefix, queue, now ms, then (envelope JSON, id,
-- func, trace id) quadruples. Returns the queue length.
local P, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cfg = fs_cfg(P, q)
local n = 0
for i = 4, #ARGV, 4 do
  redis.call('LPUSH', KEYS[1], ARGV[i])
  fs_rec(P, q, ARGV[i + 1], ARGV[i + 2], 'queued', now, {'attempt', 0, 'enqueued_ms', now, 'trace_id', ARGV[i + 3]}, cfg, true, nil, true)
  n = n + 1
end
fs_count(P, q, now, 'submitted', n)
fs_trim(P, q, now, cfg, 2 * n)
redis.call('HINCRBY', KEYS[2], 'enqueued', n)
return redis.call('LLEN', KEYS[1])

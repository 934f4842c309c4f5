-- Lua: push envelopes, count them and record them (status `queued`), atomically.
-- KEYS[1] = queue, KEYS[2] = stats; ARGV = prefix, queue, now ms, then (envelope JSON, id,
-- func, trace id) quadruples. Returns the queue length. Every key it writes is probed first
-- (`fs_local`: `TRYAGAIN`, nothing written, while the queue's slot migrates). A re-sent call
-- (a cluster client re-sends after a timeout or a redirection) pushes nothing twice: an id
-- whose record was enqueued at this call's `now` (`enqueued_ms`) is skipped (so is a second
-- enqueue of the same id in the same millisecond).
local P, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids, funcs = {}, {}
for i = 4, #ARGV, 4 do ids[#ids + 1], funcs[#funcs + 1] = ARGV[i + 1], ARGV[i + 2] end
local err, rows = fs_local_tasks(P, q, now, ids, funcs)
if err then return err end
local skip = {}
for j, row in ipairs(rows) do
  if tonumber(row[2]) == now then skip[4 * j] = true end
end
local cfg = fs_cfg(P, q)
local n = 0
for i = 4, #ARGV, 4 do
  if not skip[i] then
    redis.call('LPUSH', KEYS[1], ARGV[i])
    fs_rec(P, q, ARGV[i + 1], ARGV[i + 2], 'queued', now, {'attempt', 0, 'enqueued_ms', now, 'trace_id', ARGV[i + 3]}, cfg, true, nil, true)
    n = n + 1
  end
end
if n > 0 then
  fs_count(P, q, now, 'submitted', n)
  fs_trim(P, q, now, cfg, 2 * n)
  redis.call('HINCRBY', KEYS[2], 'enqueued', n)
end
return redis.call('LLEN', KEYS[1])

-- KEYS[1] = dead list, KEYS[2] = queue, KEYS[3] = stats; ARGV = prefix, queue, now, then
-- (dead raw, new raw, id, func) quadruples. Moves each still-dead letter back to the queue
-- with the attempt count reset; the record says queued. Returns how many moved.
local P, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- the record keys (undeclared) first: `TRYAGAIN`, nothing written, while the slot migrates
local ids, funcs = {}, {}
for i = 4, #ARGV, 4 do ids[#ids + 1], funcs[#funcs + 1] = ARGV[i + 2], ARGV[i + 3] end
local err = fs_local_tasks(P, q, now, ids, funcs)
if err then return err end
local cfg = fs_cfg(P, q)
local n = 0
for i = 4, #ARGV, 4 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    fs_rec(P, q, ARGV[i + 2], ARGV[i + 3], 'queued', now, {'attempt', 0, 'enqueued_ms', now}, cfg)
    -- the same task again: the dead attempt's details go, its creation time stays
    redis.call('HDEL', fs_k_task(P, q, ARGV[i + 2]), 'error', 'worker', 'started_ms', 'duration_ms')
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[3], 'enqueued', n) end
return n

-- Layout 1 (earlier versions; the reaper's upgrade pass only): KEYS[1] = a slot's one
-- in-flight list (`Keys::inflight`), KEYS[2] = queue; ARGV = task, prefix, now ms, records
-- (`1`|`0`). Back to the head (next out); the record says queued again; the in-flight list
-- leaves the queue's running set. Touches keys of several hash slots: never on a cluster.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
local ok, e = pcall(cjson.decode, ARGV[1])
if ok and type(e) == 'table' and type(e.queue) == 'string' then
  redis.call('ZREM', fs_k_running(ARGV[2], e.queue), KEYS[1])
end
if ARGV[4] == '1' then
  if ok and type(e) == 'table' and type(e.id) == 'string' and type(e.queue) == 'string' then
    fs_rec(ARGV[2], e.queue, e.id, tostring(e.func), 'queued', tonumber(ARGV[3]), {})
    redis.call('HINCRBY', fs_k_counts(ARGV[2], e.queue, tonumber(ARGV[3])), 'submitted', -1)
  end
end
return 1

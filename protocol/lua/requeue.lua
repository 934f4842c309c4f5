-- KEYS[1] = in-flight list of one queue (`Keys::inflight_q`), KEYS[2] = target (that queue,
-- or its dead letters for a malformed task), KEYS[3] = the queue's running set; ARGV = task,
-- prefix, now ms, records (`1`|`0`), queue id, malformed (`1`|`0`). Back to the head (next
-- out); the record says queued again; the in-flight list leaves the running set. Every key is
-- the queue's (one hash slot). Idempotent: a re-sent call finds the task gone and does
-- nothing. The record keys (undeclared) are probed first (`fs_local`: `TRYAGAIN`, nothing
-- written, while the queue's slot migrates).
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
if ARGV[4] == '1' and ARGV[6] ~= '1' then
  local ok, e = pcall(cjson.decode, ARGV[1])
  if ok and type(e) == 'table' and type(e.id) == 'string' then
    local err = fs_local_tasks(ARGV[2], ARGV[5], tonumber(ARGV[3]), {e.id}, {tostring(e.func)})
    if err then return err end
  end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[6] == '1' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], KEYS[1])
end
if ARGV[4] == '1' and ARGV[6] ~= '1' then
  local ok, e = pcall(cjson.decode, ARGV[1])
  if ok and type(e) == 'table' and type(e.id) == 'string' then
    local q = ARGV[5]
    fs_rec(ARGV[2], q, e.id, tostring(e.func), 'queued', tonumber(ARGV[3]), {})
    redis.call('HINCRBY', fs_k_counts(ARGV[2], q, tonumber(ARGV[3])), 'submitted', -1)
  end
end
return 1

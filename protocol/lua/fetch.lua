-- KEYS = per queue in the order to try, a triple: KEYS[3i-2] = the queue, KEYS[3i-1] = the
-- slot's in-flight list of that queue (`Keys::inflight_q`), KEYS[3i] = its running set;
-- ARGV[1] = now ms; ARGV[2], optional: `recover` (only the first phase below: no task is taken
-- from a queue). Moves the next task of the first non-empty queue into its in-flight list
-- and enters the list in that queue's running set, at once. Returns {task, i} (i: the
-- triple, from 1), or false. Every key of a triple is in the queue's hash slot: on Redis
-- Cluster one call carries the triples of one slot.
-- A slot fetches only when free, so a task already in one of its lists is what an earlier
-- move of this slot left there with its reply lost (this fetch, re-sent by a cluster client
-- after a timeout or a redirection, or a `BLMOVE` whose connection broke: its list was never
-- entered in the running set), or one the slot failed to claim before running it: that task
-- is returned again (its list entered in the running set if it was not), and no second one
-- is taken. (A task that ran is never left there: the worker keeps sending its finish until
-- Redis takes it.) The worker calls `recover` for the queues of such a failure before its
-- next turn on Redis Cluster, where one call covers only one slot's queues: a turn that
-- finds a task in an earlier group would not look in a later group's lists.
for i = 1, #KEYS, 3 do
  local v = redis.call('LINDEX', KEYS[i + 1], -1)
  if v then
    redis.call('ZADD', KEYS[i + 2], 'NX', ARGV[1], KEYS[i + 1])
    return {v, (i + 2) / 3}
  end
end
if ARGV[2] == 'recover' then
  return false
end
for i = 1, #KEYS, 3 do
  local v = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'RIGHT', 'LEFT')
  if v then
    redis.call('ZADD', KEYS[i + 2], ARGV[1], KEYS[i + 1])
    return {v, (i + 2) / 3}
  end
end
return false

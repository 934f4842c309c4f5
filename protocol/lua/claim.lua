-- KEYS[1] = in-flight list, KEYS[2] = running set of the task's queue; ARGV = task, now ms.
-- After a blocking move (`BLMOVE` cannot run in a script): enters the in-flight list in the
-- running set, if the task is still in flight (a reaper may have put it back). Returns 1
-- when entered.
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1

-- KEYS[1] = in-flight list of the queue (`Keys::inflight_q`), KEYS[2] = its running set; ARGV = task, now ms,
-- optionally the task's corrected text. After a blocking move (`BLMOVE` cannot run in a
-- script): enters the in-flight list in the running set, if the task is still in flight (a
-- reaper may have put it back). With a corrected text (an envelope whose `queue` names
-- another queue than the list it came from), the in-flight entry becomes that text, so a
-- requeue puts it back where it came from. Returns 1 when entered.
local i = redis.call('LPOS', KEYS[1], ARGV[1])
if not i then return 0 end
if ARGV[3] and ARGV[3] ~= ARGV[1] then redis.call('LSET', KEYS[1], i, ARGV[3]) end
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1

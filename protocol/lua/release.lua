-- KEYS[1] = a dead slot's in-flight list of one queue (`Keys::inflight_q`), KEYS[2] = that
-- queue's running set. Takes the list out of the running set when it is empty (the reaper,
-- after putting its tasks back). One hash slot (the queue's). Returns 1 when the list is
-- empty, 0 when a task is (still) in it.
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('ZREM', KEYS[2], KEYS[1])
return 1

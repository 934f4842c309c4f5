-- RQ's oldest job: its id at the head of the queue list, its `enqueued_at` in the job hash
-- (a dependent read, so a script: still one command of the poll's pipeline). KEYS[1] = the
-- queue list; ARGV[1] = the job key prefix
-- (`RQ_JOB_PREFIX`: the job id is only known here).
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return false end
return redis.call('HGET', ARGV[1] .. id, 'enqueued_at')

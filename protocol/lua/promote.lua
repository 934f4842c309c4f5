-- KEYS[1] = delayed, KEYS[2] = queue, KEYS[3] = stats; ARGV = now ms, limit.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, v in ipairs(due) do
  redis.call('ZREM', KEYS[1], v)
  redis.call('LPUSH', KEYS[2], v)
end
if #due > 0 then redis.call('HINCRBY', KEYS[3], 'enqueued', #due) end
return #due

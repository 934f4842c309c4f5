-- KEYS[1] = outbox, KEYS[2] = outbox dead list; ARGV = old member, new member ('' = delivered),
-- due ms, dead (`1`|`0`). Only acts when the old member is still there.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  if ARGV[4] == '1' then redis.call('LPUSH', KEYS[2], ARGV[2]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
end
return 1

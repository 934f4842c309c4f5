-- The beat lease: take it, or extend it when the caller already holds it. KEYS[1] = lease,
-- KEYS[2] = fencing-token counter; ARGV = holder, TTL ms, optional minimum token. The lease value
-- is `<holder> <token>`; a new holder gets the next token, raised to the minimum (a queue's fence
-- the beat was refused by: the counter lags it, e.g. after a failover of its node) at once. Returns the token, or false when another holder has it.
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, t = string.match(cur, '^(.*) (%d+)$')
  if h == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(t)
  end
  return false
end
local t = redis.call('INCR', KEYS[2])
local min = tonumber(ARGV[3] or '0') or 0
if t < min then
  redis.call('SET', KEYS[2], min)
  t = min
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t, 'PX', ARGV[2])
return t

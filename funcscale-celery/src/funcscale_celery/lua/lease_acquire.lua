-- The beat lease: take it, or extend it when the caller already holds it. KEYS[1] = lease,
-- KEYS[2] = fencing-token counter; ARGV = holder, TTL ms. The lease value is `<holder> <token>`;
-- a new holder gets the next token. Returns the token, or false when another holder has it.
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
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t, 'PX', ARGV[2])
return t

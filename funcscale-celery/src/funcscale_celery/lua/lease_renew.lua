-- Extend the beat lease while the caller holds it. KEYS[1] = lease; ARGV = lease value, TTL ms.
-- Returns 1 when renewed, 0 when lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0

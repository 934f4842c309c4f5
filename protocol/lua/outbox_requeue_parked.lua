-- KEYS[1] = outbox dead list, KEYS[2] = outbox; ARGV = due ms, then (parked raw, new raw)
-- pairs. Moves each item still parked back into the outbox: the LREM and the ZADD happen
-- together, so an item is neither lost nor duplicated. Returns how many moved.
local moved = 0
for i = 2, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), ARGV[i + 1])
    moved = moved + 1
  end
end
return moved

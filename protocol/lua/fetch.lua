-- KEYS[1] = in-flight list, then per queue in the order to try: KEYS[2i] = the queue,
-- KEYS[2i+1] = its running set; ARGV[1] = now ms. Moves the next task of the first non-empty
-- queue into the in-flight list and enters the list in that queue's running set, at once.
-- Returns {task, index}.
for i = 2, #KEYS, 2 do
  local v = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
  if v then
    redis.call('ZADD', KEYS[i + 1], ARGV[1], KEYS[1])
    return {v, i / 2}
  end
end
return false

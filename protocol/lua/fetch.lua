-- KEYS[1] = in-flight list, KEYS[2..] = queues in the order to try. Returns {task, index}.
for i = 2, #KEYS do
  local v = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
  if v then return {v, i - 1} end
end
return false

-- Celery tasks delivered to a worker but not acknowledged, per queue: kombu's Redis transport
-- keeps each in the hash `unacked` (delivery tag -> JSON [message, exchange, routing_key])
-- until the ack. One command of the poll's pipeline for all Celery queues of one hash.
-- KEYS[1] = the unacked hash (with kombu's global_keyprefix); ARGV = the queues' names (Celery
-- routes a task to the queue its routing key names). Returns one count per ARGV entry: the
-- entries whose routing key is that name.
local index = {}
local counts = {}
for i, q in ipairs(ARGV) do
  index[q] = i
  counts[i] = 0
end
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, m = pcall(cjson.decode, v)
  if ok and type(m) == 'table' and type(m[3]) == 'string' then
    local i = index[m[3]]
    if i then
      counts[i] = counts[i] + 1
    end
  end
end
return counts

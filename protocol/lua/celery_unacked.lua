-- Celery tasks delivered to a worker but not acknowledged, per queue: kombu's Redis transport
-- keeps each in the hash `unacked` (delivery tag -> JSON [message, exchange, routing_key])
-- until the ack. One command of the poll's pipeline for all Celery queues of one hash.
-- KEYS[1] = the unacked hash (with kombu's global_keyprefix); ARGV = the queues' names (Celery
-- routes a task to the queue its routing key names). Returns one count per ARGV entry: the
-- entries whose routing key is that name, except tasks whose `eta` (a countdown, an ETA, a
-- delayed retry) is still ahead: Celery delivers those at once, beyond the prefetch limit, and
-- holds them unacknowledged until they are due; they run nothing yet.

-- days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil)
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- unix ms of Celery's ISO 8601 `eta` (`2026-12-01T11:50:00.123456+00:00`; no offset: UTC)
local function eta_ms(s)
  local y, mo, d, h, mi, se = string.match(s, '^(%d+)-(%d+)-(%d+)[T ](%d+):(%d+):(%d+)')
  if not y then return nil end
  local ms = ((days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 24 + tonumber(h)) * 60
    + tonumber(mi)) * 60000 + tonumber(se) * 1000
  local frac = string.match(s, '^%d+-%d+-%d+[T ]%d+:%d+:%d+%.(%d+)')
  if frac then ms = ms + math.floor(tonumber('0.' .. frac) * 1000) end
  local sign, oh, om = string.match(s, '([+-])(%d%d):?(%d%d)$')
  if sign then
    local off = (tonumber(oh) * 60 + tonumber(om)) * 60000
    if sign == '+' then ms = ms - off else ms = ms + off end
  end
  return ms
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

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
      local headers = type(m[1]) == 'table' and m[1]['headers']
      local eta = type(headers) == 'table' and headers['eta']
      local due = type(eta) ~= 'string' or (eta_ms(eta) or 0) <= now_ms
      if due then
        counts[i] = counts[i] + 1
      end
    end
  end
end
return counts

-- A Redis Stream consumer group's backlog (FuncQueue format Stream): one command of the
-- operator's poll pipeline. KEYS[1] = the stream; ARGV[1] = the consumer group; ARGV[2] = the
-- most entries one XRANGE may count when Redis cannot give the lag (`STREAM_COUNT_CAP`).
-- Returns {'ok', lag, pending, first undelivered entry id or false, exact 1|0},
-- {'nostream'}, {'nogroup'} or {'wrongtype', <type>}.
--   lag: entries in the stream not yet delivered to the group. 0 when there is no entry after
--   `last-delivered-id`; the stream's length when every entry is after it (the group is new,
--   or its undelivered entries were trimmed); else what Redis >= 7 computes (XINFO GROUPS
--   `lag`). That is nil after XDEL of entries the group has not read yet, and absent before
--   7: then it is counted: the entries after `last-delivered-id`, or, when there are cap or
--   more of them, the stream's length minus the delivered entries still in the stream (at
--   most cap counted); when both sides reach cap the lag is given as cap and `exact` is 0.
--   pending: entries delivered to a consumer of the group and not acknowledged (the PEL).
local t = redis.call('TYPE', KEYS[1])
t = t['ok'] or t
if t == 'none' then return {'nostream'} end
if t ~= 'stream' then return {'wrongtype', t} end
local group
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local h = {}
  for i = 1, #g, 2 do h[g[i]] = g[i + 1] end
  if h['name'] == ARGV[1] then
    group = h
    break
  end
end
if not group then return {'nogroup'} end
local last = group['last-delivered-id']
local after = '(' .. last
local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)[1]
local first_id = false
if first then first_id = first[1] end
local lag = group['lag']
local exact = 1
if not first_id then
  lag = 0
elseif redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1] == first_id then
  -- every entry still in the stream is undelivered: the length. (Redis 7.0 keeps counting
  -- undelivered entries that XTRIM removed in its lag; they will never be delivered.)
  lag = redis.call('XLEN', KEYS[1])
elseif type(lag) ~= 'number' then
  do
    local cap = tonumber(ARGV[2])
    lag = #redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', cap)
    if lag >= cap then
      -- many undelivered: count the delivered entries still in the stream instead
      local delivered = #redis.call('XRANGE', KEYS[1], '-', last, 'COUNT', cap)
      if delivered < cap then
        lag = redis.call('XLEN', KEYS[1]) - delivered
      else
        exact = 0
      end
    end
  end
end
return {'ok', lag, group['pending'], first_id, exact}

-- Walks one index on the server. KEYS[1] = the index; ARGV[1] = mode.
--
-- - `rev` (a status index, newest first): ARGV = mode, max, min (scores), offset, batch,
--   wanted, id prefix (or ''); KEYS[2] (optional) = a function index the ids must be in.
--   Stops at `wanted` matches.
-- - `lex` (the id index: ARGV[2..3] = ZRANGEBYLEX min max) or `rank` (a function index, in
--   rank order: ARGV[2..3] unused): ARGV[4..] = offset, batch, wanted, id prefix (or ''),
--   record key prefix (the queue's), queue, statuses (`,a,b,`, or '' for any), function
--   (or ''), time min, time max, the record key prefix of earlier versions (read when the
--   queue's record is missing; it must name the queue). Each id's
--   record is read (one `HMGET`) for its status, function, queue and last update; the
--   batch's matches are returned newest first, at most `wanted`.
--
-- Returns {ids, last update ms, consumed}: `consumed` index entries were looked at.
local mode = ARGV[1]
local offset, batch, want, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local ids
if mode == 'rev' then
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES', 'LIMIT', offset, batch)
  local out, scores, consumed = {}, {}, 0
  for j = 1, #ids, 2 do
    local id = ids[j]
    consumed = consumed + 1
    local ok = prefix == '' or string.sub(id, 1, #prefix) == prefix
    if ok and KEYS[2] and not redis.call('ZSCORE', KEYS[2], id) then ok = false end
    if ok then
      out[#out + 1] = id
      scores[#scores + 1] = ids[j + 1]
      if #out >= want then break end
    end
  end
  return {out, scores, consumed}
end
if mode == 'lex' then
  ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', offset, batch)
else
  ids = redis.call('ZRANGE', KEYS[1], offset, offset + batch - 1)
end
local tk, q, st, fn, tmin, tmax, ltk = ARGV[8], ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14]
local hits = {}
for _, id in ipairs(ids) do
  if prefix == '' or string.sub(id, 1, #prefix) == prefix then
    local r = redis.call('HMGET', tk .. id, 'queue', 'status', 'func', 'updated_ms')
    if not r[1] and ltk then r = redis.call('HMGET', ltk .. id, 'queue', 'status', 'func', 'updated_ms') end
    local t = tonumber(r[4])
    if r[1] == q and t and t >= tmin and t <= tmax and (st == '' or (r[2] and string.find(st, ',' .. r[2] .. ',', 1, true))) and (fn == '' or r[3] == fn) then
      hits[#hits + 1] = {t, id}
    end
  end
end
table.sort(hits, function(a, b) if a[1] ~= b[1] then return a[1] > b[1] end return a[2] > b[2] end)
local out, scores = {}, {}
for j = 1, math.min(want, #hits) do
  out[j] = hits[j][2]
  scores[j] = tostring(hits[j][1])
end
return {out, scores, #ids}

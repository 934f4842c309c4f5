-- Lua functions shared by the scripts that write task records, counts and destinations.
-- Prepended to a script's body. `P` is the key prefix; every key name is
-- built by the `fs_k_*` functions below, which spell them as `Keys` (keys.rs) does (the
-- tests compare the two).
--
-- - `fs_rec(P, q, id, func, status, now, extra, cfg, bulk, prev, fresh)`: upsert the record hash
--   (`extra` = flat field/value list), move it between the status indexes (scored by last
--   update: together the time index), add it to the id and function indexes when it is new
--   or changes queue or function (leaving those of its old queue and function), and unless
--   `bulk` (the caller counts and trims: a bulk enqueue once for all; a worker's finish is
--   counted by the worker and adds no record) count the transition in the minute bucket and
--   trim retention every `FS_RECORD_TRIM_EVERY`th write. `prev` (optional list of the usual
--   previous statuses) lets it skip reading the hash: 3 commands for a finish (`ZREM` old
--   status, `HSET`, `ZADD` new status). `fresh` (a producer's enqueue, a beat firing, a
--   destination task): a new task, so a record left under the same id is replaced whole
--   (its error, worker, times go). Returns the previous status (nil for a new record).
-- - `fs_started(P, raw, slot, now)`: record the attempt of envelope `raw` as started; returns a
--   `TRYAGAIN` error reply (nothing written) when a key it writes is not on this node.
-- - `fs_local(k...)`, `fs_local_list(ks)`, `fs_local_tasks(P, q, now, ids, funcs, extra)`: the probes
--   of a Redis Cluster slot migration (below).
-- - `fs_dest(P, q, d, kind, raw, field, payload, id, now)`: stage the delivery of a task of
--   queue `q` to a destination (a URL, or another queue) in `q`'s outbox.
--
-- The constants below are `RECORD_MAX_AGE_MS`, `RECORD_MAX_COUNT`, `COUNTS_RETENTION_MS` and
-- `RECORD_TRIM_EVERY` of records.rs (the tests compare them).
local FS_RECORD_MAX_AGE_MS = 86400000
local FS_RECORD_MAX_COUNT = 100000
local FS_COUNTS_RETENTION_MS = 86400000
local FS_RECORD_TRIM_EVERY = 32
local function fs_k_queue(P, q) return P .. ':q:' .. q end
local function fs_k_stats(P, q) return P .. ':stats:' .. q end
local function fs_k_task(P, q, id) return P .. ':task:' .. q .. ':' .. id end
local function fs_k_task_legacy(P, id) return P .. ':task:' .. id end
local function fs_k_tasks_status(P, q, s) return P .. ':tasks:' .. q .. ':s:' .. s end
local function fs_k_tasks_func(P, q, f) return P .. ':tasks:' .. q .. ':f:' .. f end
local function fs_k_tasks_ids(P, q) return P .. ':tasks:' .. q .. ':ids' end
local function fs_k_counts(P, q, now) return P .. ':counts:' .. q .. ':' .. string.format('%d', math.floor(now / 60000)) end
local function fs_k_queue_config(P, q) return P .. ':queue-config:' .. q end
-- the outbox of a queue (`Keys::queue_outbox`): in its hash tag, so staging a delivery touches
-- only the finishing task's slot (`outbox:q:<id>` for an id naming no namespace); the forward
-- marker of a delivery into queue `dq` (`Keys::fwd_marker`), in the destination's tag
local function fs_k_queue_outbox(P, q)
  if string.match(q, '^{.*%..*}$') then return P .. ':outbox:' .. q end
  return P .. ':outbox:q:' .. q
end
local function fs_k_fwd(P, dq, did) return P .. ':fwd:' .. dq .. ':' .. did end
local function fs_k_running(P, q) return P .. ':running:' .. q end
local fs_statuses = {'queued', 'started', 'succeeded', 'retrying', 'dead'}
-- Redis Cluster, a slot migrating: the record keys are not in a script's KEYS (they are built
-- from ARGV), and an undeclared key the node does not hold (moved already, or new) makes the
-- script fail *after* its earlier writes ran. So a write script probes every key it will touch
-- before its first write: `redis.pcall('EXISTS', k...)` answers an error instead of aborting, and
-- the script returns `TRYAGAIN` with nothing written (redis-rs' cluster client waits and
-- re-sends; every write script is idempotent under a re-send). The keys of a probe go in *one*
-- EXISTS (so they must share one hash slot: the queue's): on the slot's source a key it lacks
-- is an error (`ASK`), and on its target, where a client sent by `ASK` runs the script under
-- `ASKING`, a single key is served even when it is still on the source (it would look absent),
-- but a command of several keys one of which is missing is refused (`TRYAGAIN`). Off a cluster
-- every key is local.
local function fs_here(ks)
  local r = redis.pcall('EXISTS', unpack(ks))
  return type(r) ~= 'table' or not r.err
end
local function fs_is_local(k) return fs_here({k}) end
-- `fs_local` over a list, in EXISTS calls of at most 256 keys (each of at least two keys)
local function fs_local_list(ks)
  for i = 1, #ks, 256 do
    local part = {unpack(ks, i, math.min(i + 255, #ks))}
    if #part == 1 and i > 1 then part[2] = ks[i - 1] end
    if not fs_here(part) then
      return redis.error_reply('TRYAGAIN keys of the hash slot of ' .. ks[1] .. ' are migrating: nothing written, try again')
    end
  end
  return nil
end
local function fs_local(...) return fs_local_list({...}) end
-- The keys a record write of queue `q` may touch: the status indexes, the id index, the counts
-- bucket of `now`, the queue's settings, the caller's own keys of the queue (list `extra`), the
-- records of `ids` (functions `funcs`, in the same order) and the function indexes they may
-- enter or leave (those of `funcs`, and the ones the records name, read once the records are
-- known to be here). Returns a `TRYAGAIN` error reply, or nil and each record's {func,
-- enqueued_ms}.
local function fs_local_tasks(P, q, now, ids, funcs, extra)
  local ks, seen = {fs_k_tasks_ids(P, q), fs_k_counts(P, q, now), fs_k_queue_config(P, q)}, {}
  for _, s in ipairs(fs_statuses) do ks[#ks + 1] = fs_k_tasks_status(P, q, s) end
  for _, k in ipairs(extra or {}) do ks[#ks + 1] = k end
  for i, id in ipairs(ids) do
    ks[#ks + 1] = fs_k_task(P, q, id)
    if not seen[funcs[i]] then seen[funcs[i]] = true; ks[#ks + 1] = fs_k_tasks_func(P, q, funcs[i]) end
  end
  local err = fs_local_list(ks)
  if err then return err end
  local rows, more = {}, {}
  for i, id in ipairs(ids) do
    rows[i] = redis.call('HMGET', fs_k_task(P, q, id), 'func', 'enqueued_ms')
    local f = rows[i][1]
    if f and not seen[f] then seen[f] = true; more[#more + 1] = fs_k_tasks_func(P, q, f) end
  end
  if #more > 0 then
    more[#more + 1] = fs_k_tasks_ids(P, q)
    err = fs_local_list(more)
    if err then return err end
  end
  return nil, rows
end
local function fs_cfg(P, q)
  local c = redis.call('HMGET', fs_k_queue_config(P, q), 'record_max_age_ms', 'record_max_count', 'on_success', 'on_failure')
  return {age = tonumber(c[1]) or FS_RECORD_MAX_AGE_MS, count = tonumber(c[2]) or FS_RECORD_MAX_COUNT, ok = c[3], ko = c[4]}
end
-- Retention: the status indexes together hold every record of the queue by last update, so
-- the oldest records are the oldest heads of those zsets; the id index counts them all. The
-- victims' records (and their function indexes) are probed before anything is deleted: one
-- whose keys are not on this node (a slot migrating) is left for a later trim, or with
-- `strict` the call deletes nothing and returns (0, a `TRYAGAIN` error reply). A record an
-- earlier version wrote under the id alone (no hash tag) is looked at for an indexed id without
-- a record, and only where it is local: off a cluster (it cannot exist on one). Returns the
-- count removed.
local function fs_trim(P, q, now, cfg, budget, strict)
  local victims, taken = {}, {}
  for i, s in ipairs(fs_statuses) do
    taken[i] = 0
    if #victims < budget then
      local ids = redis.call('ZRANGEBYSCORE', fs_k_tasks_status(P, q, s), '-inf', now - cfg.age, 'LIMIT', 0, budget - #victims)
      for _, id in ipairs(ids) do victims[#victims + 1] = id end
      taken[i] = #ids
    end
  end
  local over = redis.call('ZCARD', fs_k_tasks_ids(P, q)) - #victims - cfg.count
  if over > 0 and #victims < budget then
    local need = math.min(over, budget - #victims)
    local cand = {}
    for i, s in ipairs(fs_statuses) do
      local r = redis.call('ZRANGE', fs_k_tasks_status(P, q, s), taken[i], taken[i] + need - 1, 'WITHSCORES')
      for j = 1, #r, 2 do cand[#cand + 1] = {tonumber(r[j + 1]), r[j]} end
    end
    table.sort(cand, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
    for j = 1, math.min(need, #cand) do victims[#victims + 1] = cand[j][2] end
  end
  local plan = {}
  for _, id in ipairs(victims) do
    local h = fs_k_task(P, q, id)
    local ok = fs_here({h, fs_k_tasks_ids(P, q)})
    local r, lh = {}, nil
    if ok then
      r = redis.call('HMGET', h, 'queue', 'status', 'func')
      -- no record: one an earlier version wrote under the id alone, still of this queue? (Only
      -- then, so that on a cluster, where the probe of that key errors on another node and
      -- Redis counts the error in its errorstats, a trim probes it only for an indexed id
      -- without a record.)
      local l = fs_k_task_legacy(P, id)
      if not r[1] and fs_is_local(l) then
        local lr = redis.call('HMGET', l, 'queue', 'status', 'func')
        if lr[1] == q then lh, r = l, lr end
      end
      local ks = {h, fs_k_tasks_ids(P, q)}
      if r[2] then ks[#ks + 1] = fs_k_tasks_status(P, q, r[2]) end
      if r[3] then ks[#ks + 1] = fs_k_tasks_func(P, q, r[3]) end
      ok = fs_here(ks)
    end
    if ok then
      plan[#plan + 1] = {id, h, lh, r}
    elseif strict then
      return 0, redis.error_reply('TRYAGAIN the record ' .. h .. ' (a victim) is not on this node (its hash slot is migrating): nothing deleted, try again')
    end
  end
  for _, v in ipairs(plan) do
    local id, r = v[1], v[4]
    redis.call('DEL', v[2])
    if v[3] then redis.call('DEL', v[3]) end
    if r[2] then redis.call('ZREM', fs_k_tasks_status(P, q, r[2]), id) end
    if r[3] then redis.call('ZREM', fs_k_tasks_func(P, q, r[3]), id) end
    redis.call('ZREM', fs_k_tasks_ids(P, q), id)
  end
  return #plan
end
local function fs_count(P, q, now, field, n)
  local b = fs_k_counts(P, q, now)
  local v = redis.call('HINCRBY', b, field, string.format('%d', n))
  -- a new field: (re)arm the expiry, and mark the format (records::counts reads `started`
  -- of format 2 as the started records plus the outcomes of attempts that had none)
  if v == n then
    redis.call('PEXPIRE', b, FS_COUNTS_RETENTION_MS)
    redis.call('HSET', b, 'fmt', 2)
  end
  return b, v
end
local fs_count_field = {queued = 'submitted', started = 'started', succeeded = 'completed', retrying = 'retried', dead = 'dead'}
local function fs_rec(P, q, id, func, status, now, extra, cfg, bulk, prev, fresh)
  local h = fs_k_task(P, q, id)
  -- a task that an earlier version recorded under its id alone (`Keys::task_legacy`, e.g.
  -- one in flight across the upgrade) keeps its record: moved under its queue
  -- (off a cluster only: such a record has no hash tag, and cannot exist on a cluster; there
  -- the probe errors when another node serves its slot, counted in Redis' errorstats, but only
  -- for a task written without a record)
  if not fresh and redis.call('EXISTS', h) == 0 then
    local lh = fs_k_task_legacy(P, id)
    if fs_is_local(lh) and redis.call('HGET', lh, 'queue') == q then redis.call('RENAME', lh, h) end
  end
  -- A status index of a queue holds exactly the ids whose record has that status and queue
  -- (every write moves the id between them; trimming removes both). So when the caller knows
  -- the usual previous status (`prev`), taking the id out of that index proves the record
  -- exists in this queue with that status, and the hash need not be read; its function
  -- (and so its function index entry) is then the one it already has: one HSET of the
  -- status, the time and `extra`. Numbers go to Redis as integer text (`nows`; a string
  -- `now` as given), not through Lua's float formatting.
  local nows = type(now) == 'string' and now or string.format('%d', now)
  local was = nil
  if prev then
    for _, p in ipairs(prev) do
      if redis.call('ZREM', fs_k_tasks_status(P, q, p), id) == 1 then was = p break end
    end
  end
  if was then
    redis.call('HSET', h, 'status', status, 'updated_ms', nows, unpack(extra))
  else
    local fields = {'status', status, 'updated_ms', nows}
    local old = redis.call('HMGET', h, 'status', 'queue', 'func')
    was = old[1]
    if not old[1] or old[2] ~= q or status == 'queued' then
      -- new, or a (re)enqueue that may reuse an id for another function or queue: (re)write
      -- what it is; the id and function indexes are sets, written when that changes, and
      -- the id leaves the indexes of the queue and function it had (a reused id is a new
      -- task there: its old queue's queries and retention no longer see it)
      local n = #fields
      fields[n + 1], fields[n + 2], fields[n + 3], fields[n + 4], fields[n + 5], fields[n + 6] = 'id', id, 'queue', q, 'func', func
      -- a new task under a used id (`fresh`): nothing of the old task's record stays
      if fresh and old[1] then redis.call('DEL', h) end
      if fresh or old[2] ~= q then fields[n + 7], fields[n + 8] = 'created_ms', nows end
      if old[2] ~= q then
        redis.call('ZADD', fs_k_tasks_ids(P, q), 0, id)
        if old[2] then
          redis.call('ZREM', fs_k_tasks_ids(P, old[2]), id)
          if old[1] then redis.call('ZREM', fs_k_tasks_status(P, old[2], old[1]), id) end
          if old[3] then redis.call('ZREM', fs_k_tasks_func(P, old[2], old[3]), id) end
        end
      elseif old[3] ~= func and old[3] then
        redis.call('ZREM', fs_k_tasks_func(P, q, old[3]), id)
      end
      if fresh or old[2] ~= q or old[3] ~= func then redis.call('ZADD', fs_k_tasks_func(P, q, func), nows, id) end
    end
    if old[1] and old[1] ~= status and old[2] == q then redis.call('ZREM', fs_k_tasks_status(P, q, old[1]), id) end
    for _, v in ipairs(extra) do fields[#fields + 1] = v end
    redis.call('HSET', h, unpack(fields))
  end
  redis.call('ZADD', fs_k_tasks_status(P, q, status), nows, id)
  -- bulk (enqueue of many): the caller counts and trims once for all
  if bulk then return was end
  local _, v = fs_count(P, q, now, fs_count_field[status], 1)
  if status == 'retrying' or status == 'dead' then fs_count(P, q, now, 'failed', 1) end
  -- Retention, amortised: every FS_RECORD_TRIM_EVERY-th write of a status in a minute (the count
  -- just taken) trims up to 2 × FS_RECORD_TRIM_EVERY records, the same bound per write as trimming
  -- 2 on every write, without reading the config and the indexes on every write.
  if v % FS_RECORD_TRIM_EVERY == 0 then fs_trim(P, q, now, cfg or fs_cfg(P, q), 2 * FS_RECORD_TRIM_EVERY) end
  return was
end
local function fs_started(P, raw, slot, now)
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or type(e.id) ~= 'string' or type(e.queue) ~= 'string' then return end
  local func = tostring(e.func)
  local err = fs_local_tasks(P, e.queue, now, {e.id}, {func})
  if err then return err end
  -- a re-sent call (its reply lost): the record says this start already, nothing to count twice
  local r = redis.call('HMGET', fs_k_task(P, e.queue, e.id), 'status', 'worker', 'started_ms', 'attempt')
  if r[1] == 'started' and r[2] == slot and tonumber(r[3]) == now and tonumber(r[4]) == (tonumber(e.attempt) or 0) then return end
  fs_rec(P, e.queue, e.id, func, 'started', now, {'attempt', tonumber(e.attempt) or 0, 'worker', slot, 'started_ms', now},
    nil, false, {'queued', 'retrying'})
end
-- How long a delivery to a queue stays claimed by the worker whose finish staged it (it
-- forwards it at once; others take it when this passes): `outbox::CLAIM_LEASE_MS`.
local FS_OUTBOX_LEASE_MS = 30000
-- Stage the delivery of a finished task to destination `d` in the queue's own outbox (one
-- slot): a URL delivery due now, or the prepared envelope for destination queue `dq`
-- (`ForwardItem`: `forward.lua` enqueues it in dq's slot), claimed by the caller for
-- FS_OUTBOX_LEASE_MS. Returns the staged queue item (the caller forwards it), else nil.
local function fs_dest(P, q, d, kind, raw, field, payload, id, now)
  if not d or d == '' then return nil end
  local did = id .. ':' .. kind
  if string.sub(d, 1, 6) == 'queue:' then
    local spec = string.sub(d, 7)
    local dq, df = spec, 'on_' .. kind
    local slash = string.find(spec, '/', 1, true)
    if slash then dq = string.sub(spec, 1, slash - 1); df = string.sub(spec, slash + 1) end
    local env = '{"v":1,"id":' .. cjson.encode(did) .. ',"func":' .. cjson.encode(df) ..
      ',"args":[],"kwargs":{"event":"' .. kind .. '","task":' .. raw .. ',"' .. field .. '":' .. payload ..
      '},"queue":' .. cjson.encode(dq) .. ',"enqueued_at_ms":' .. now .. ',"attempt":0}'
    local item = '{"id":' .. cjson.encode(did) .. ',"queue":' .. cjson.encode(dq) .. ',"func":' .. cjson.encode(df) ..
      ',"env":' .. cjson.encode(env) .. '}'
    redis.call('ZADD', fs_k_queue_outbox(P, q), now + FS_OUTBOX_LEASE_MS, item)
    return item
  end
  local item = '{"id":' .. cjson.encode(did) .. ',"url":' .. cjson.encode(d) .. ',"attempt":0,"body":{"event":"' ..
    kind .. '","task":' .. raw .. ',"' .. field .. '":' .. payload .. '}}'
  redis.call('ZADD', fs_k_queue_outbox(P, q), now, item)
  return nil
end

-- KEYS[1] = in-flight list of the queue (`Keys::inflight_q`), KEYS[2] = target (delayed zset | dead list | unused), KEYS[3] = stats;
-- ARGV = task, mode (ack|retry|dead), new task text, due ms, prefix, queue, id (empty: no
-- record, no destination), func, now ms, records (`1`|`0`), attempt, worker slot, duration
-- ms, started ms, payload JSON (result or error), error text, start recorded (`1`|`0`: a
-- hint, which status the record most likely has), earlier error (`1`|`0`: the envelope
-- carries one, so the record may have an error to clear). Does nothing when the task is no
-- longer in flight (a reaper already put it back), so a late finish never duplicates it, and
-- returns 0; else 1, or 2 when the record said `started` (the worker counts the outcome, see
-- `PendingCounts` in the worker); `{1|2, item}` when it staged a delivery to a destination
-- queue (`ForwardItem` JSON, claimed for the caller, which forwards it). The record and the
-- destination (in the queue's outbox, `Keys::queue_outbox`) are written in the same script, in
-- the queue's slot. The in-flight list leaves the queue's running set (`Keys::running`).
-- Every undeclared key it writes (running set, record keys, counts, the queue's outbox) is
-- probed first (`fs_local`: `TRYAGAIN`, nothing written, while the queue's slot migrates).
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
do
  local P, q, id, mode = ARGV[5], ARGV[6], ARGV[7], ARGV[2]
  local err = nil
  if id == '' then err = fs_local(fs_k_running(P, q), KEYS[1]) else
    local ids, funcs = {}, {}
    if ARGV[10] == '1' then ids, funcs = {id}, {ARGV[8]} end
    err = fs_local_tasks(P, q, tonumber(ARGV[9]), ids, funcs, {fs_k_running(P, q)})
    if not err then
      local c = fs_cfg(P, q)
      local d = nil
      if mode == 'ack' then d = c.ok elseif mode == 'dead' then d = c.ko end
      if d and d ~= '' then err = fs_local(fs_k_queue_outbox(P, q), fs_k_running(P, q)) end
    end
  end
  if err then return err end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
-- the slot no longer runs a task of the queue
redis.call('ZREM', fs_k_running(ARGV[5], ARGV[6]), KEYS[1])
local mode = ARGV[2]
if mode == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'retried', 1)
elseif mode == 'dead' then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'dead', 1)
end
local P, q, id, func, now = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local done = 1
if id ~= '' then
  local cfg = fs_cfg(P, q)
  if ARGV[10] == '1' then
    local status = 'succeeded'
    if mode == 'retry' then status = 'retrying' elseif mode == 'dead' then status = 'dead' end
    -- the likely previous status first: started (recorded), else retrying for a retry (the
    -- record keeps that status while the retry waits and is fetched), else queued
    local prev = {'queued', 'retrying', 'started'}
    if ARGV[17] == '1' then prev = {'started', 'queued', 'retrying'} elseif ARGV[11] ~= '0' then prev = {'retrying', 'queued', 'started'} end
    -- finished_ms is the update time of an outcome (TaskRecord::from_pairs); the error is
    -- written when there is one, or to clear an earlier attempt's (the envelope carries it)
    local extra = {'attempt', ARGV[11], 'worker', ARGV[12], 'duration_ms', ARGV[13], 'started_ms', ARGV[14]}
    if ARGV[16] ~= '' or ARGV[18] == '1' then extra[9], extra[10] = 'error', ARGV[16] end
    -- `bulk`: counted by the worker (PendingCounts); a finish moves a record and adds none,
    -- so retention is the business of the writes that add them (each trims 2 per record)
    local was = fs_rec(P, q, id, func, status, ARGV[9], extra, cfg, true, prev)
    if was == 'started' then done = 2 end
  end
  local staged = nil
  if mode == 'ack' then
    staged = fs_dest(P, q, cfg.ok, 'success', ARGV[1], 'result', ARGV[15], id, now)
  elseif mode == 'dead' then
    staged = fs_dest(P, q, cfg.ko, 'failure', ARGV[1], 'error', ARGV[15], id, now)
  end
  -- a delivery to a queue staged in the queue's outbox, claimed for this worker: it forwards
  -- it at once (`forward.lua`, then `outbox_settle.lua`)
  if staged then return {done, staged} end
end
return done

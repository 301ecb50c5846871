-- sluice_acquire_v5: reserve the earliest slot for a cost on the best of N accounts,
-- and, for a tenant's share, take it only when the quota's fair ledger admits it;
-- first apply the reconciles it carries (v4), so that a request costs one call;
-- skip the accounts the group's tail index shows cannot do better (v5).
-- Bump the version (name, Rust constant and docs/ARCHITECTURE.md) whenever KEYS, ARGV
-- or the reply change: old and new gateways run side by side during a rolling deploy.
--
-- KEYS: 2 per candidate account, all with the same hash tag:
--   KEYS[2c-1] = sluice:{<group>}:w:<name>   KEYS[2c] = sluice:{<group>}:s:<name>
--   then 2 per carried reconcile (v4): sluice:{<group>}:w:<name> and its mark
--   sluice:{<group>}:r:<name>:<reservation id> (reconcile.lua),
--   then, when a share is given (ARGV after the rows), the fair ledger of the group:
--   sluice:{<group>}:f (zset: slots booked ahead, member <i|b>|<start tag>|<seq>|<tenant>,
--   score the slot) and sluice:{<group>}:fc (hash: v = virtual time, f:<tenant> = its
--   finish tag, seq),
--   and last (v5) the group's tail index sluice:{<group>}:tails (hash: field = an
--   account's windows key, value = a lower bound of its tail, us).
-- ARGV:
--   [1] now (us) or '' to read Redis TIME     [2] max wait (us)
--   [3] requests in the cost (for pacing)     [4] 1 for a read-only check (cost zero)
--   [5] pacing mode: 0 off, 1 auto, 2 fixed   [6] fixed interval (us)   [7] fixed burst
--   [8] windows TTL past the last slot (ms)   [9] n, the number of limits
--   [10] f, the number of reconciles carried   [11] their reconcile window (ms)
--   then n rows of 6: id, window (us), bucket width (us), configured limit, charge,
--   auto-pacing eligible (1/0)
--   then f carried reconciles of 1 + 2n: the reservation's slot (us), then per limit
--   its estimated and its actual charge (of the same quota: the rows above)
--   then, optionally, the share: tenant, weight (>= 1), class ('i' interactive, 'b'
--   batch), tag scale, horizon (fair.rs: TAG_SCALE, HORIZON), reserve (v3: requests of
--   each request limit a batch share leaves free, at most half of the limit)
-- Returns one of:
--   {1, c, slot_us, wait_us, binding, remaining_1..n, effective_1..n}   granted on c
--   {0, c, retry_after_us, binding, remaining_1..n, effective_1..n}      refused; c is ready first
--   {2, c, reason}                                                       every candidate disabled
--   {3, i, capacity, charge}                          limit i can never hold the charge
--   binding: 0 now, 1 queue (earlier slots), 2 cooldown, 3 pacing, 4 fair share,
--   10 + i limit i.
--   Each reply ends with f more values: the carried reconciles' outcomes in order
--   (reconcile.lua's replies 1-4). They are applied before anything is read for the
--   decision, whatever it is.
-- A windows hash that holds many buckets is made a real hash table once (field `enc`,
-- a value longer than a listpack holds): a listpack's field lookups scan it.
-- Fair share (fair.rs has the rule and its reasoning; the in-process twin the same
-- arithmetic): only a slot later than now, within max wait, asked with a share,
-- consults the ledger. Slots booked that passed are dropped and move the virtual time
-- V to their largest start tag. Batch never books ahead: asked for a later slot, it is
-- refused (binding 4) with the wait until that slot, when it may find it free.
-- Batch is also paced without the burst tolerance (slot >= tat), so that batch never
-- takes a burst an interactive request would queue behind. Interactive starts at
-- S = max(V, its finish tag) and is refused (binding 4, wait
-- until the earliest booked slot) only when another interactive tenant has a slot
-- ahead and S >= V + horizon * scale. A grant books its slot at S and moves the
-- tenant's finish tag to S + floor(scale / weight). A refusal writes only V.
-- Released slots: a candidate may instead take the earliest hole (field `holes`, written
-- by release.lua) not before now nor its cooldown, no later than its tail slot, whose
-- charge covers the cost in every limit; taking it removes the hole and writes no charge,
-- tail or tat (the hole's charge, already in the buckets, is inherited), so no window's
-- total grows. KEYS, ARGV and the reply are unchanged: an older acquire ignores holes.
-- Candidates are examined in the order given, and the scan stops early at a slot now
-- with at least half of every charged limit left, or at the best slot now of the first
-- eight (GOOD_HEADROOM, GOOD_AFTER): an account far from full costs one account's work
-- however many are listed. The caller rotates the order to spread the load.
-- Tail index (v5): once the best slot found is ahead of now, the candidate the index
-- shows earliest is examined next, and a candidate whose indexed tail proves its slot
-- later than the best found is not examined at all. Its slot is at
-- least max(now, tail), plus the least pacing interval this call's arguments allow
-- (pace is never below 1000, a learned limit never above the configured one) when the
-- tail is ahead of now; a hole (release.lua deletes the account's entry) is the only
-- slot before the tail. The tail never moves back while the windows hash lives, so an
-- entry never written since is only lower than the truth (more examined, never fewer);
-- an entry is written only for an account with no holes and its tail ahead of now.
-- A skipped candidate could not have become the best, the early one cannot stop the scan
-- (its slot is ahead of now), and ties go to the earlier in the order given, so the
-- decision is exactly the one examining every candidate in order makes.
-- Invariants: read all, check all, then write: a refusal charges nothing (it may drop
-- expired buckets and write tails it read into the tail index). Pacing is GCRA whose
-- burst tolerance serves only arrivals with nobody queued ahead (tail <= now); queued
-- slots are at least one interval apart. A slot is never before the account's tail, so
-- the only window a charge can overfill is the one ending at its slot, and that window's usage only falls
-- as the slot moves later; the slot chosen is the earliest where every limit fits.

local now = clock(ARGV[1])
local max_wait = tonumber(ARGV[2])
local requests = tonumber(ARGV[3])
local read_only = ARGV[4] == '1'
local mode, interval, burst = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local windows_ttl_ms = tonumber(ARGV[8])
local n = tonumber(ARGV[9])
local folded, fold_window_ms = tonumber(ARGV[10]), tonumber(ARGV[11])
local fold_at = 12 + 6 * n
local share_at = fold_at + folded * (1 + 2 * n)
local tenant = ARGV[share_at]
local fair = tenant ~= nil
local fair_z, fair_c, weight, class
local tails_key = KEYS[#KEYS]
local candidates = (#KEYS - 1 - 2 * folded) / 2
local scale, horizon
local reserve = 0
if fair then
  weight, class = tonumber(ARGV[share_at + 1]), ARGV[share_at + 2]
  scale, horizon = tonumber(ARGV[share_at + 3]), tonumber(ARGV[share_at + 4])
  if class == 'b' then reserve = tonumber(ARGV[share_at + 5]) or 0 end
  candidates = (#KEYS - 1 - 2 * folded - 2) / 2
  fair_z, fair_c = KEYS[#KEYS - 2], KEYS[#KEYS - 1]
end
local unchosen = {}

-- The earliest t >= from at which `charge` fits limit row r of windows hash h.
local function fit(h, r, eff, total, charge, from)
  -- charge <= eff - total, not total + charge <= eff: a difference of two amounts up to
  -- MAX_CHARGE is exact where their sum may round (common.lua).
  if charge <= eff - total then
    return from
  end
  local lo = kmin_of(from, r.window, r.bucket)
  local hi = math.floor(from / r.bucket)
  local names = {}
  for k = lo, hi do
    names[#names + 1] = r.id .. ':' .. int(k)
  end
  local vals = redis.call('HMGET', h, unpack(names))
  local used = 0
  for i = 1, #names do
    used = used + (tonumber(vals[i]) or 0)
  end
  local needed = charge - (eff - used)
  if needed <= 0 then
    return from
  end
  local freed = 0
  for i = 1, #names do
    freed = freed + (tonumber(vals[i]) or 0)
    if freed >= needed then
      return math.max(from, (lo + i) * r.bucket + r.window)
    end
  end
  return from
end

-- The limit rows are the same for every candidate; per-candidate values live apart.
local rows = read_limits(12, n, 6)
for _, r in ipairs(rows) do
  r.charge, r.auto = r.a, r.b
end

-- The carried reconciles, applied first (common.lua's reconcile_rows), so that the
-- decision sees them; their outcomes end every reply.
local outcomes = {}
for j = 1, folded do
  local at = fold_at + (j - 1) * (1 + 2 * n)
  local amounts = {}
  for m = 1, 2 * n do
    amounts[m] = amount(ARGV[at + m])
  end
  local k = 2 * candidates + 2 * j
  outcomes[j] = reconcile_rows(KEYS[k - 1], KEYS[k], tonumber(ARGV[at]), fold_window_ms,
    windows_ttl_ms, now, rows, amounts)
end
local function answer(reply)
  for j = 1, folded do
    reply[#reply + 1] = outcomes[j]
  end
  return reply
end
-- The early stop of the candidate scan: a slot now with at least this headroom (in
-- millionths of the tightest limit, after the charge), or any slot now once this many
-- candidates were examined (memory.rs: GOOD_HEADROOM, GOOD_AFTER).
local GOOD_HEADROOM, GOOD_AFTER = 500000, 8
-- Buckets a windows hash may hold as a listpack: past this, its linear field lookups
-- cost more than a hash table's memory (docs/benchmarks.md, #17).
local LISTPACK_MAX_BUCKETS = 24
-- One read of the windows hash: tail, tat, exp, then per limit its total, its eviction
-- pointer and the bucket of now (where a charge without wait lands).
local wfields = { 'tail', 'tat', 'exp' }
for i, r in ipairs(rows) do
  r.know = math.floor(now / r.bucket)
  r.ft, r.fo, r.fk = r.id .. ':t', r.id .. ':o', r.id .. ':' .. int(r.know)
  wfields[3 * i + 1], wfields[3 * i + 2], wfields[3 * i + 3] = r.ft, r.fo, r.fk
end
wfields[#wfields + 1] = 'holes'
local holes_at = #wfields
wfields[#wfields + 1] = 'enc'
local charges_any = false
for _, r in ipairs(rows) do
  if r.charge > 0 then charges_any = true end
end

-- Released slots (release.lua) still ahead of now, parsed from the `holes` field.
local function parse_holes(raw)
  local out = {}
  if not raw then return out end
  for entry in string.gmatch(raw, '[^;]+') do
    local at, rest = string.match(entry, '^(%d+)@(.*)$')
    local at_us = tonumber(at)
    if at_us ~= nil and at_us >= now then
      local charges = {}
      for id, v in string.gmatch(rest, '([^=,]+)=(%d+)') do
        charges[id] = tonumber(v)
      end
      out[#out + 1] = { slot = at_us, charges = charges, text = entry }
    end
  end
  return out
end

-- The tail index's entries, read once the best slot found is ahead of now (nil: not
-- read), and the bound they give each candidate's slot (nil: none). The bound of an
-- indexed tail ahead of now adds the least pacing interval any candidate gets from this
-- call (pace >= 1000, learned limits <= configured ones: common.lua's pacing with
-- eff = limit and pace = 1000).
local indexed, bounds = nil, nil

local best = nil
local disabled = nil
local capacity = nil
-- The scan, in the order given (c), but for one candidate examined ahead of its turn
-- (early): the one the index shows earliest, whose slot then bounds which of the rest
-- can do better. Ties (slot, then headroom) go to the earlier in the order given, so the
-- decision does not depend on the order of examination. Each candidate is examined at
-- most once: examining writes evictions of buckets that left their windows, whose totals
-- are written with the plan's commit or by keep_eviction.
local c, early, pending = 0, nil, nil
while true do
  local this = pending
  if this ~= nil then
    pending = nil
  else
    c = c + 1
    if c == early then c = c + 1 end
    if c > candidates then break end
    -- Good enough (#17): a slot now with half of every limit left, or the best slot now
    -- of the first eight; past that, the later candidates cannot do better where it
    -- matters, and examining them is what makes many accounts cost (store.rs).
    if best ~= nil and best.slot == now
      and (best.headroom >= GOOD_HEADROOM or c > GOOD_AFTER) then
      break
    end
    this = c
    -- skipped when its slot must be later than the best's: it can change nothing
    if bounds ~= nil and bounds[c] ~= nil and bounds[c] > best.slot then this = nil end
  end
  if this ~= nil then
    local h, st = KEYS[2 * this - 1], KEYS[2 * this]
    local off, cool, pace = read_state(st, rows)
    local ok = true
    local eff, total, oldest = {}, {}, {}
    if off then
      ok = false
      if disabled == nil then
        disabled = { this, off }
      end
    else
      for i, r in ipairs(rows) do
        eff[i] = r.eff
        if ok and r.charge > r.eff then
          ok = false
          if capacity == nil then
            capacity = { i, r.eff, r.charge }
          end
        end
      end
    end
    if ok then
      local t, tau = pacing(mode, interval, burst, pace, rows)
      local w = redis.call('HMGET', h, unpack(wfields))
      local tail, tat, exp = tonumber(w[1]) or 0, tonumber(w[2]) or 0, tonumber(w[3]) or 0
      local evicted, moved, current = {}, {}, {}
      local spread = 0
      for i, r in ipairs(rows) do
        total[i] = tonumber(w[1 + 3 * i]) or 0
        oldest[i] = tonumber(w[2 + 3 * i])
        current[i] = tonumber(w[3 + 3 * i]) or 0
        local kmin = kmin_of(now, r.window, r.bucket)
        if oldest[i] ~= nil and oldest[i] < kmin then
          total[i] = drop_buckets(h, r.id, oldest[i], kmin, total[i])
          oldest[i] = kmin
          evicted[#evicted + 1] = i
          moved[i] = true
        end
        if oldest[i] ~= nil then spread = spread + r.know - oldest[i] + 1 end
      end
      -- Many buckets: made a hash table, for good (the value is longer than any
      -- listpack value; nothing reads it). Only the key's memory grows.
      if spread > LISTPACK_MAX_BUCKETS and not w[holes_at + 1] then
        redis.call('HSET', h, 'enc', string.rep('h', 256))
      end
      local slot, binding = now, 0
      if tail > slot then slot, binding = tail, 1 end
      if cool > slot then slot, binding = cool, 2 end
      if t ~= nil and requests > 0 then
        -- the burst tolerance serves only arrivals with nobody queued ahead
        local paced = tat - tau
        -- a batch tenant gets no burst tolerance: its slots stay one interval apart
        if class == 'b' then paced = tat end
        if tail > now then paced = math.max(paced, tail + t) end
        if paced > slot then slot, binding = paced, 3 end
      end
      local from = slot
      local headroom = nil
      for i, r in ipairs(rows) do
        if r.charge > 0 then
          -- a batch share leaves its reserve of a request limit (id 'r…') free
          local cap = eff[i]
          if reserve > 0 and string.byte(r.id, 1) == 114 then
            cap = math.max(cap - math.min(reserve, math.floor(cap / 2)), r.charge)
          end
          local ti = fit(h, r, cap, total[i], r.charge, from)
          if ti > slot then slot, binding = ti, 10 + i end
          local left = math.floor((eff[i] - total[i] - r.charge) / eff[i] * 1e6)
          if headroom == nil or left < headroom then headroom = left end
        end
      end
      headroom = headroom or math.huge
      -- A released slot no later than the tail's, not before now nor the cooldown,
      -- whose charge covers the cost in every limit: taken as it is (window.rs).
      local holes, hole = nil, nil
      if charges_any and not read_only then
        holes = parse_holes(w[holes_at])
        for j, hl in ipairs(holes) do
          local covers = true
          for _, r in ipairs(rows) do
            if (hl.charges[r.id] or 0) < r.charge then covers = false end
          end
          if covers and hl.slot >= math.max(now, cool) and (hl.slot < slot or (hole == nil and hl.slot == slot)) then
            slot, hole = hl.slot, j
            if hl.slot > now then binding = 1 else binding = 0 end
          end
        end
      end
      if best == nil or slot < best.slot or (slot == best.slot and (headroom > best.headroom
        or (headroom == best.headroom and this < best.c))) then
        if best ~= nil then
          table.insert(unchosen, best)
        end
        best = { c = this, slot = slot, binding = binding, headroom = headroom, eff = eff,
                 total = total, oldest = oldest, evicted = evicted, moved = moved, t = t,
                 tat = tat, tail = tail, h = h, exp = exp, current = current,
                 holes = holes, hole = hole, holed = w[holes_at] ~= false }
      else
        table.insert(unchosen, { c = this, slot = slot, headroom = headroom, total = total,
                                 oldest = oldest, evicted = evicted, tail = tail, h = h,
                                 holed = w[holes_at] ~= false })
      end
    end
  end
  if bounds == nil and best ~= nil and best.slot > now and c < candidates then
    local least_interval = 0
    if requests > 0 then
      -- the configured limits stand in for the learned ones here; read_state sets r.eff
      -- afresh for every candidate examined after, and each plan keeps its own copy (eff)
      for _, r in ipairs(rows) do r.eff = r.limit end
      least_interval = pacing(mode, interval, burst, 1000, rows) or 0
    end
    local names = {}
    for j = 1, candidates do names[j] = KEYS[2 * j - 1] end
    indexed, bounds = redis.call('HMGET', tails_key, unpack(names)), {}
    local m = nil
    for j = 1, candidates do
      local tail = tonumber(indexed[j])
      if tail ~= nil and tail > now then
        bounds[j] = tail + least_interval
        if j > c and (m == nil or bounds[j] < bounds[m]) then m = j end
      end
    end
    if m ~= nil and bounds[m] < best.slot then pending, early = m, m end
  end
end

-- Records the eviction of a plan that is not committed (its totals must stay true).
local function keep_eviction(p)
  if #p.evicted > 0 then
    local f = {}
    for _, i in ipairs(p.evicted) do
      local id = rows[i].id
      f[#f + 1] = id .. ':t'; f[#f + 1] = int(p.total[i])
      f[#f + 1] = id .. ':o'; f[#f + 1] = int(p.oldest[i])
    end
    redis.call('HSET', p.h, unpack(f))
  end
end
for _, p in ipairs(unchosen) do
  keep_eviction(p)
end

if best == nil then
  if disabled ~= nil then
    return answer({ 2, disabled[1], disabled[2] })
  end
  return answer({ 3, capacity[1], capacity[2], capacity[3] })
end

-- The fair ledger's word on a slot ahead for the share: (nil, start tag) admitted, or
-- (wait, nil). Booked slots that passed move the virtual time on first.
local function fair_admit()
  local v = tonumber(redis.call('HGET', fair_c, 'v')) or 0
  local passed = redis.call('ZRANGEBYSCORE', fair_z, '-inf', now)
  if #passed > 0 then
    for _, m in ipairs(passed) do
      local tag = tonumber(string.match(m, '^%a|(%d+)|'))
      if tag ~= nil and tag > v then v = tag end
    end
    redis.call('ZREMRANGEBYSCORE', fair_z, '-inf', now)
    redis.call('HSET', fair_c, 'v', int(v))
  end
  if class == 'b' then return best.slot - now, nil end
  local start = math.max(v, tonumber(redis.call('HGET', fair_c, 'f:' .. tenant)) or 0)
  local ahead = redis.call('ZRANGE', fair_z, 0, -1, 'WITHSCORES')
  if #ahead == 0 then return nil, start end
  local earliest = tonumber(ahead[2])
  for j = 1, #ahead, 2 do
    local cls, t = string.match(ahead[j], '^(%a)|%d+|%d+|(.*)$')
    if cls == 'i' and t ~= tenant then
      if start >= v + horizon * scale then return earliest - now, nil end
      break
    end
  end
  return nil, start
end

-- Books the granted slot for the share at its start tag: the slot in the ledger, the
-- tenant's finish tag moved on by scale / weight.
local function fair_book(slot, start)
  local seq = redis.call('HINCRBY', fair_c, 'seq', 1)
  if class ~= 'b' then
    redis.call('HSET', fair_c, 'f:' .. tenant, int(start + math.floor(scale / weight)))
  end
  redis.call('ZADD', fair_z, slot, class .. '|' .. int(start) .. '|' .. seq .. '|' .. tenant)
  local ttl = math.ceil((slot - now) / 1000) + windows_ttl_ms
  for _, k in ipairs({ fair_z, fair_c }) do
    if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
  end
end

local wait = best.slot - now
local refused_fair, fair_start = nil, nil
if fair and not read_only and wait > 0 and wait <= max_wait then
  refused_fair, fair_start = fair_admit()
end
local reply
if wait > max_wait or read_only or refused_fair ~= nil then
  keep_eviction(best)
end
if wait > max_wait then
  reply = { 0, best.c, wait, best.binding }
elseif refused_fair ~= nil then
  reply = { 0, best.c, refused_fair, 4 }
else
  if best.hole ~= nil then
    -- Taking a hole: its charge is in the buckets already, its slot at or before the
    -- tail and paced when booked; only the hole goes (and any eviction is kept).
    keep_eviction(best)
    local texts = {}
    for j, hl in ipairs(best.holes) do
      if j ~= best.hole then texts[#texts + 1] = hl.text end
    end
    if #texts > 0 then
      redis.call('HSET', best.h, 'holes', table.concat(texts, ';'))
    else
      redis.call('HDEL', best.h, 'holes')
    end
  elseif not read_only then
    local h = best.h
    local tail = math.max(best.tail, best.slot)
    best.tail = tail
    local tat = best.tat
    if best.t ~= nil and requests > 0 then
      tat = math.max(tat, best.slot) + best.t * requests
    end
    -- Numbers go to redis.call as they are: Redis writes integers below 1e17 exactly.
    local f = { 'tail', tail, 'tat', tat }
    local m = 4
    for i, r in ipairs(rows) do
      local total, oldest = best.total[i], best.oldest[i]
      -- A total and an eviction pointer are written only when they change: the total
      -- on a charge or an eviction, the pointer on the first charge or an eviction.
      local moved = best.moved[i] or (oldest == nil and r.charge > 0)
      if r.charge > 0 then
        local k = math.floor(best.slot / r.bucket)
        if k == r.know then
          f[m + 1], f[m + 2] = r.fk, best.current[i] + r.charge
          m = m + 2
        else
          redis.call('HINCRBY', h, r.id .. ':' .. int(k), r.charge)
        end
        total = total + r.charge
        best.total[i] = total
        oldest = oldest or kmin_of(now, r.window, r.bucket)
      end
      if moved then
        f[m + 1], f[m + 2], f[m + 3], f[m + 4] = r.ft, total, r.fo, oldest
        m = m + 4
      elseif r.charge > 0 then
        f[m + 1], f[m + 2] = r.ft, total
        m = m + 2
      end
    end
    -- The key must live until windows_ttl past the latest of tail and tat. Its expiry
    -- instant is kept in the hash (exp) so that PEXPIRE is sent only when it must move,
    -- and then 2 s further than needed.
    local needed = math.max(tail, tat, now) + windows_ttl_ms * 1000
    if best.exp < needed then
      local until_ = needed + 2000000
      f[m + 1], f[m + 2] = 'exp', until_
      redis.call('HSET', h, unpack(f))
      redis.call('PEXPIRE', h, math.ceil((until_ - now) / 1000))
    else
      redis.call('HSET', h, unpack(f))
    end
  end
  if fair_start ~= nil then
    fair_book(best.slot, fair_start)
  end
  reply = { 1, best.c, best.slot, wait, best.binding }
end
-- The tail index (v5), kept only for two or more candidates: the tails ahead of now of
-- the examined accounts without holes, where they passed their entries (the granted
-- account's tail as it now is).
if candidates > 1 then
  local f, latest = {}, now
  for _, p in ipairs(unchosen) do table.insert(f, p) end
  table.insert(f, best)
  local fields = {}
  for _, p in ipairs(f) do
    local known = indexed and tonumber(indexed[p.c]) or 0
    if p.tail > now and p.tail > known and not p.holed and p.hole == nil then
      fields[#fields + 1] = p.h
      fields[#fields + 1] = p.tail
      if p.tail > latest then latest = p.tail end
    end
  end
  if #fields > 0 then
    redis.call('HSET', tails_key, unpack(fields))
    redis.call('PEXPIRE', tails_key, math.ceil((latest - now) / 1000) + windows_ttl_ms)
  end
end
for i = 1, n do
  reply[#reply + 1] = math.max(best.eff[i] - best.total[i], 0)
end
for i = 1, n do
  reply[#reply + 1] = best.eff[i]
end
return answer(reply)

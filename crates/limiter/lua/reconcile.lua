-- sluice_reconcile_v3: replace a reservation's estimated charges with the actual ones.
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
-- v3: ARGV[3] is the reconcile window after the slot, not the mark's TTL; reply 4.
--
-- KEYS: [1] sluice:{<group>}:w:<name>   [2] sluice:{<group>}:r:<name>:<reservation id>
-- ARGV:
--   [1] now (us) or '' to read Redis TIME   [2] the reservation's slot (us)
--   [3] reconcile window after the slot (ms): the mark lives until slot + window,
--   and a later reconcile is ignored   [4] windows TTL past now (ms)
--   [5] n, the number of limits
--   then n rows of 6: id, window (us), bucket width (us), configured limit,
--   estimated charge, actual charge
-- Returns 1 when applied for the first time, 2 when it replaced an earlier reconcile,
-- 3 when the reservation was released (release.lua): nothing changed, its charge
-- belongs to a released slot now, 4 when it came after the reconcile window (ignored:
-- its mark may be gone, so applying it could apply it twice).
-- Invariants: idempotent per reservation: the mark remembers what was last applied per
-- limit, and a repeated call applies only the difference. A difference lands in the
-- reservation's own bucket while that bucket is in the window; once it has left, a
-- positive difference lands in the current bucket and a refund is dropped. A bucket
-- never goes below zero.

local now = clock(ARGV[1])
local slot = tonumber(ARGV[2])
local window_ms, windows_ttl_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local deadline = slot + window_ms * 1000
if now > deadline then
  return 4
end
local mark_ttl_ms = math.max(math.ceil((deadline - now) / 1000), 1)
local n = tonumber(ARGV[5])
local h, mark = KEYS[1], KEYS[2]
local rows = read_limits(6, n, 6)

local previous = redis.call('GET', mark)
if previous == 'released' then
  return 3
end
local before = {}
if previous then
  for id, v in string.gmatch(previous, '([^=,]+)=(%d+)') do
    before[id] = tonumber(v)
  end
end

local applied = {}
local wrote = false
for _, r in ipairs(rows) do
  local was = r.a
  if previous then
    was = before[r.id] or 0
  end
  local delta = r.b - was
  local total, oldest = evict(h, r.id, r.window, r.bucket, now)
  local k = math.floor(slot / r.bucket)
  if delta ~= 0 and k >= kmin_of(now, r.window, r.bucket) then
    add(h, r.id, k, delta, total, oldest, now, r.window, r.bucket)
    wrote = true
  elseif delta > 0 then
    add(h, r.id, math.floor(now / r.bucket), delta, total, oldest, now, r.window, r.bucket)
    wrote = true
  end
  applied[#applied + 1] = r.id .. '=' .. int(r.b)
end
if wrote then
  keep(h, windows_ttl_ms)
end
redis.call('SET', mark, table.concat(applied, ','), 'PX', int(mark_ttl_ms))
if previous then
  return 2
end
return 1

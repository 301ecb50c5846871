-- sluice_record_v4: add usage to an account's buckets: usage spent outside Sluice, or
-- what a replica granted locally while Redis was unreachable (handed back).
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
-- v2: ARGV[3] `ahead`, a fifth value per row, the reply, and the charge's expiry kept
-- in the hash's `exp`.
-- v3: ARGV[4] `booked`; "lost" no longer means only a missing key (a reconcile or an
-- outside usage recorded after a restart recreates it without the queue).
-- v4: a hand-back placed ahead moves the tail up to its slot even when Redis kept the
-- account's windows.
--
-- KEYS: [1] sluice:{<group>}:w:<name>
-- ARGV: [1] now (us) or ''   [2] windows TTL past the charge (ms)
--   [3] ahead (us): the charge lands in the bucket of now + ahead (0: of now)
--   [4] booked (us): a slot this replica knows Redis gave on the account, relative to
--   now, less the client timeout (0: none ahead)
--   [5] n, the number of limits, then n rows of 5: id, window (us), bucket width (us),
--   charge, and a charge added only when Redis lost the account's windows (a replica
--   hands back what Redis would otherwise hold, see crates/limiter/src/handover.rs)
-- Lost: the key does not exist, or has no `tail` (only acquire and a lost hand-back set
-- it: a key recreated by a reconcile has none), or its tail is before `booked` (the
-- tail never moves back while the key lives, so Redis no longer holds that slot).
-- When lost, or when the charge lands ahead of now (a hand-back), the tail moves up to
-- the charge's slot: the hand-back is one charge at the latest slot granted locally,
-- standing for grants spread from the outage's start to that slot, so shared grants
-- must queue after it (then every window they close holds the whole charge); and a
-- later replica's hand-back can tell whether its own slots are held.
-- Returns 2 when lost, else 1.
-- Invariants: unchecked (the usage already happened or is booked); the key lives, and
-- its `exp` (read by acquire before it moves the expiry) says so, until the windows TTL
-- past the charge's bucket: acquire never shortens it below that.

local now = clock(ARGV[1])
local windows_ttl_ms = tonumber(ARGV[2])
local ahead = math.max(tonumber(ARGV[3]) or 0, 0)
local booked = math.max(tonumber(ARGV[4]) or 0, 0)
local n = tonumber(ARGV[5])
local at = now + ahead
local h = KEYS[1]
local tail = tonumber(redis.call('HGET', h, 'tail'))
local missing = tail == nil or (booked > 0 and tail < now + booked)
local wrote = false
for i = 1, n do
  local b = 6 + (i - 1) * 5
  local id, window, bucket, charge = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), amount(ARGV[b + 3])
  if missing then
    charge = math.min(charge + amount(ARGV[b + 4]), MAX_CHARGE + 1)
  end
  if charge > 0 then
    local total, oldest = evict(h, id, window, bucket, now)
    add(h, id, math.floor(at / bucket), charge, total, oldest, now, window, bucket)
    wrote = true
  end
end
if wrote then
  if (missing or ahead > 0) and (tail or 0) < at then
    redis.call('HSET', h, 'tail', int(at))
  end
  keep(h, windows_ttl_ms + math.ceil(ahead / 1000))
  local until_ = at + windows_ttl_ms * 1000
  if (tonumber(redis.call('HGET', h, 'exp')) or 0) < until_ then
    redis.call('HSET', h, 'exp', int(until_))
  end
end
if missing then
  return 2
end
return 1

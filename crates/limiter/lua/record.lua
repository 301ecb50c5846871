-- sluice_record_v2: add usage to an account's buckets: usage spent outside Sluice, or
-- what a replica granted locally while Redis was unreachable (handed back).
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
-- v2: ARGV[3] `ahead`, a fifth value per row, the reply, and the charge's expiry kept
-- in the hash's `exp`.
--
-- KEYS: [1] sluice:{<group>}:w:<name>
-- ARGV: [1] now (us) or ''   [2] windows TTL past the charge (ms)
--   [3] ahead (us): the charge lands in the bucket of now + ahead (0: of now)
--   [4] n, the number of limits, then n rows of 5: id, window (us), bucket width (us),
--   charge, and a charge added only when the key does not exist (Redis lost, or no
--   longer has, this account's windows: a replica hands back what Redis would otherwise
--   hold, see crates/limiter/src/handover.rs)
-- Returns 2 when the key did not exist, else 1.
-- Invariants: unchecked (the usage already happened or is booked); the key lives, and
-- its `exp` (read by acquire before it moves the expiry) says so, until the windows TTL
-- past the charge's bucket: acquire never shortens it below that.

local now = clock(ARGV[1])
local windows_ttl_ms = tonumber(ARGV[2])
local ahead = math.max(tonumber(ARGV[3]) or 0, 0)
local n = tonumber(ARGV[4])
local at = now + ahead
local h = KEYS[1]
local missing = redis.call('EXISTS', h) == 0
local wrote = false
for i = 1, n do
  local b = 5 + (i - 1) * 5
  local id, window, bucket, charge = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if missing then
    charge = charge + tonumber(ARGV[b + 4])
  end
  if charge > 0 then
    local total, oldest = evict(h, id, window, bucket, now)
    add(h, id, math.floor(at / bucket), charge, total, oldest, now, window, bucket)
    wrote = true
  end
end
if wrote then
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

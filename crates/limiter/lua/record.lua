-- sluice_record_v1: add usage spent outside Sluice to an account's current buckets.
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
--
-- KEYS: [1] sluice:{<group>}:w:<name>
-- ARGV: [1] now (us) or ''   [2] windows TTL past now (ms)   [3] n, the number of limits
--   then n rows of 4: id, window (us), bucket width (us), charge
-- Returns 1.
-- Invariants: unchecked (the usage already happened); lands in the bucket of now.

local now = clock(ARGV[1])
local windows_ttl_ms = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local h = KEYS[1]
local wrote = false
for i = 1, n do
  local b = 4 + (i - 1) * 4
  local id, window, bucket, charge = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if charge > 0 then
    local total, oldest = evict(h, id, window, bucket, now)
    add(h, id, math.floor(now / bucket), charge, total, oldest, now, window, bucket)
    wrote = true
  end
end
if wrote then
  keep(h, windows_ttl_ms)
end
return 1

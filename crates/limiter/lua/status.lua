-- sluice_status_v1: an account as it stands (for /v1/quotas and the sidecar).
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
--
-- KEYS: [1] sluice:{<group>}:w:<name>   [2] sluice:{<group>}:s:<name>
-- ARGV: [1] now (us) or ''   [2] n, the number of limits
--   then n rows of 6: id, window (us), bucket width (us), configured limit, 0, 0
-- Returns {cooldown_left_us, off_reason or '', pace, booked_ahead_us, used_1..n, effective_1..n}
-- Invariants: charges nothing (it may drop expired buckets).

local now = clock(ARGV[1])
local n = tonumber(ARGV[2])
local h, st = KEYS[1], KEYS[2]
local rows = read_limits(3, n, 6)
local off, cool, pace = read_state(st, rows)
local tail = tonumber(redis.call('HGET', h, 'tail')) or 0
local reply = { math.max(cool - now, 0), off or '', pace, math.max(tail - now, 0) }
for _, r in ipairs(rows) do
  local total = evict(h, r.id, r.window, r.bucket, now)
  reply[#reply + 1] = total
end
for _, r in ipairs(rows) do
  reply[#reply + 1] = r.eff
end
return reply

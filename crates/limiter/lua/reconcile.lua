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
local rows = read_limits(6, tonumber(ARGV[5]), 6)
local amounts = {}
for i, r in ipairs(rows) do
  amounts[2 * i - 1], amounts[2 * i] = r.a, r.b
end
-- The work is common.lua's reconcile_rows, which acquire.lua runs too for the
-- reconciles it carries.
return reconcile_rows(KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  now, rows, amounts)

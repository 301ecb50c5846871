-- sluice_release_v2: give back a reservation that will not be used (its client went
-- away before it was sent), so that a later request may take its slot.
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
--
-- KEYS: [1] sluice:{<group>}:w:<name>   [2] sluice:{<group>}:r:<name>:<reservation id>
--   [3] (v2) the group's tail index sluice:{<group>}:tails (acquire.lua)
-- ARGV:
--   [1] now (us) or '' to read Redis TIME   [2] the reservation's slot (us)
--   [3] mark TTL (ms)                       [4] n, the number of limits
--   then n rows of 2: id, the charge the reservation made
-- Returns 1 when its slot became a released slot (a hole), 2 when it was only marked
-- released (the slot has passed, is after the tail, or charges nothing), 3 when it
-- was already released or reconciled (nothing changed).
-- Invariants: the charge stays in the buckets (later slots were fitted with it there);
-- nothing but the mark and the windows hash's `holes` field is written, so no window's
-- total changes. The mark (value 'released') makes a second release and any later
-- reconcile of the reservation change nothing. A hole lives in the windows hash beside
-- the charge it stands for, so the two are lost together (a flush, an expiry); one is
-- made only for a slot ahead of now and not after the tail. At most 64 holes are kept
-- per account (passed ones dropped, then the earliest). Field `holes`: entries
-- `<slot>@<id>=<charge>,...` joined by ';' (acquire.lua reads and takes them).
-- A hole is a slot before the tail, so making one deletes the account's entry in the
-- tail index (v2), whose value must never be later than the account's earliest slot.

local MAX_HOLES = 64
local now = clock(ARGV[1])
local slot = tonumber(ARGV[2])
local mark_ttl_ms = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local h, mark, tails_key = KEYS[1], KEYS[2], KEYS[3]

if redis.call('EXISTS', mark) == 1 then
  return 3
end
redis.call('SET', mark, 'released', 'PX', int(mark_ttl_ms))
local tail = tonumber(redis.call('HGET', h, 'tail'))
if slot <= now or tail == nil or slot > tail then
  return 2
end
local parts, any = {}, false
for i = 1, n do
  local id, charge = ARGV[3 + 2 * i], tonumber(ARGV[4 + 2 * i])
  if charge > 0 then
    any = true
  end
  parts[#parts + 1] = id .. '=' .. int(charge)
end
if not any then
  return 2
end
local kept = {}
local raw = redis.call('HGET', h, 'holes')
if raw then
  for entry in string.gmatch(raw, '[^;]+') do
    local at = tonumber(string.match(entry, '^(%d+)@'))
    if at ~= nil and at >= now then
      kept[#kept + 1] = { slot = at, text = entry }
    end
  end
end
if #kept >= MAX_HOLES then
  local earliest = 1
  for i = 2, #kept do
    if kept[i].slot < kept[earliest].slot then
      earliest = i
    end
  end
  table.remove(kept, earliest)
end
kept[#kept + 1] = { slot = slot, text = int(slot) .. '@' .. table.concat(parts, ',') }
local texts = {}
for i, k in ipairs(kept) do
  texts[i] = k.text
end
redis.call('HSET', h, 'holes', table.concat(texts, ';'))
redis.call('HDEL', tails_key, h)
return 1

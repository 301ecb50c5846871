-- sluice_update_v1: change an account's learned state (cooldown, learned limit, pacing
-- slow-down, out of rotation).
-- Bump the version whenever KEYS, ARGV or the reply change (see acquire.lua).
--
-- KEYS: [1] sluice:{<group>}:w:<name>   [2] sluice:{<group>}:s:<name>
-- ARGV:
--   [1] now (us) or ''   [2] op: cool | uncool | eff | pace | off | on
--   [3] value: cool = duration (us); eff = limit id; pace = thousandths; off = reason
--   [4] eff: the learned amount, or '' to forget it
--   [5] state TTL (ms)   [6] windows TTL past now (ms)
--   [7] pacing mode  [8] fixed interval (us)  [9] fixed burst  [10] n, the number of limits
--   then n rows of 6: id, window (us), bucket width (us), configured limit, 0, auto (1/0)
-- Returns 1.
-- Invariants: a cooldown only ever lengthens (uncool clears it); when it is set the
-- pacing clock moves so that requests resume one interval apart, not in one burst.
-- A learned limit above the configured one has no effect. Pacing is clamped to
-- 1000..64000.

local now = clock(ARGV[1])
local op, value, amount = ARGV[2], ARGV[3], ARGV[4]
local state_ttl_ms, windows_ttl_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local mode, interval, burst = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local n = tonumber(ARGV[10])
local h, st = KEYS[1], KEYS[2]

if op == 'cool' then
  local rows = read_limits(11, n, 6)
  for _, r in ipairs(rows) do r.auto = r.b end
  local _, cool, pace = read_state(st, rows)
  local untill = math.max(cool, now + tonumber(value))
  redis.call('HSET', st, 'cool', int(untill))
  local _, tau = pacing(mode, interval, burst, pace, rows)
  if tau ~= nil then
    local tat = tonumber(redis.call('HGET', h, 'tat')) or 0
    if untill + tau > tat then
      redis.call('HSET', h, 'tat', int(untill + tau))
      keep(h, math.ceil((untill + tau - now) / 1000) + windows_ttl_ms)
    end
  end
  keep(st, math.max(state_ttl_ms, math.ceil((untill - now) / 1000)))
  return 1
elseif op == 'uncool' then
  redis.call('HDEL', st, 'cool')
elseif op == 'eff' then
  if amount == '' then
    redis.call('HDEL', st, 'eff:' .. value)
  else
    redis.call('HSET', st, 'eff:' .. value, int(math.min(math.max(tonumber(amount) or 1, 1), MAX_CHARGE)))
  end
elseif op == 'pace' then
  redis.call('HSET', st, 'pace', int(math.min(math.max(tonumber(value), 1000), 64000)))
elseif op == 'off' then
  redis.call('HSET', st, 'off', value)
elseif op == 'on' then
  redis.call('HDEL', st, 'off')
else
  return redis.error_reply('sluice_update_v1: unknown op ' .. tostring(op))
end
if redis.call('EXISTS', st) == 1 then
  keep(st, state_ttl_ms)
end
return 1

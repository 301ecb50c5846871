-- sluice common helpers v1: prepended at compile time to every sluice_*_v1 script.
--
-- Key schema (one hash tag per key group, so one decision touches one cluster slot):
--   sluice:{<group>}:w:<name>        windows hash   (TTL: the longest window past the last slot)
--   sluice:{<group>}:s:<name>        state hash     (TTL: 24 h past the last change, or the cooldown)
--   sluice:{<group>}:r:<name>:<id>   reconcile mark (TTL: the reconcile window past the slot,
--                                    Quota::reconcile_window: 20 min to 1 h)
--   sluice:{<group>}:tails           tail index (acquire.lua, v5): per windows key, a lower
--                                    bound of its tail (TTL: the windows TTL past the
--                                    latest tail written)
-- Windows hash fields, per limit id (e.g. r60000 = requests per 60000 ms):
--   <id>:t  sum of the buckets kept      <id>:o  oldest bucket index kept (eviction pointer)
--   <id>:<k> amount charged in bucket k (k = floor(slot_us / bucket_us))
--   tail    latest slot given (us)       tat     GCRA theoretical arrival time (us)
--   exp     when the key expires (us), as acquire last set it (PEXPIRE only when it must move)
-- State hash fields: cool (cooldown until, us), pace (slow-down, thousandths),
--   off (reason the account is out of rotation), eff:<id> (learned limit).
-- Units: every time is in microseconds on the Redis clock (TIME) unless a test passes
-- its own; amounts are whole requests or tokens. Mirrors crates/limiter/src/window.rs.

-- MAX_CHARGE: the most one request charges a limit, and the most a limit, a learned
-- limit or a window total holds: 2^53 - 1, the largest integer a Lua number (a double)
-- holds exactly. Mirrors MAX_CHARGE in crates/limiter/src/quota.rs (a unit test holds
-- the two together). Every amount read from ARGV is clamped by `amount`, to at most
-- MAX_CHARGE + 1 (a charge no limit can hold), and `add` never takes a total past
-- MAX_CHARGE, so `int` never formats a number past 2^53 and nothing wraps.
local MAX_CHARGE = 9007199254740991

local function int(n)
  return string.format('%d', n)
end

-- An amount from ARGV (or a stored field): a whole number in 0..MAX_CHARGE + 1.
local function amount(s)
  local v = tonumber(s) or 0
  if v ~= v or v < 0 then
    return 0
  end
  return math.min(math.floor(v), MAX_CHARGE + 1)
end

local function clock(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function kmin_of(t, window, bucket)
  return math.floor(math.max(t - window, 0) / bucket)
end

-- Deletes limit `id`'s buckets from `oldest` up to (not including) `kmin` and returns
-- `total` less what they held. The caller records the new total and pointer.
local function drop_buckets(h, id, oldest, kmin, total)
  if kmin - oldest <= 64 then
    local names = {}
    for k = oldest, kmin - 1 do
      names[#names + 1] = id .. ':' .. int(k)
    end
    local vals = redis.call('HMGET', h, unpack(names))
    for i = 1, #names do
      if vals[i] then
        total = total - tonumber(vals[i])
      end
    end
    redis.call('HDEL', h, unpack(names))
  else
    local all = redis.call('HGETALL', h)
    local prefix = id .. ':'
    for i = 1, #all, 2 do
      local name = all[i]
      if string.sub(name, 1, #prefix) == prefix then
        local k = tonumber(string.sub(name, #prefix + 1))
        if k ~= nil and k < kmin then
          total = total - tonumber(all[i + 1])
          redis.call('HDEL', h, name)
        end
      end
    end
  end
  return total
end

-- Drops limit `id`'s buckets that left the window ending at `now`.
-- Returns the kept total and the eviction pointer (nil when the limit holds nothing).
-- Writes only to a hash that already exists, so it never creates a key without a TTL.
local function evict(h, id, window, bucket, now)
  local kmin = kmin_of(now, window, bucket)
  local f = redis.call('HMGET', h, id .. ':t', id .. ':o')
  local total = tonumber(f[1]) or 0
  local oldest = tonumber(f[2])
  if oldest == nil or oldest >= kmin then
    return total, oldest
  end
  total = drop_buckets(h, id, oldest, kmin, total)
  redis.call('HSET', h, id .. ':t', int(total), id .. ':o', int(kmin))
  return total, kmin
end

-- Adds `delta` to bucket k of limit `id` (never below zero, and never taking the total
-- past MAX_CHARGE: the excess is dropped, the window is full either way); returns the
-- new total.
-- `oldest` is the pointer evict returned: nil means the limit held nothing yet.
local function add(h, id, k, delta, total, oldest, now, window, bucket)
  local field = id .. ':' .. int(k)
  local old = tonumber(redis.call('HGET', h, field)) or 0
  local new = math.max(old + math.min(delta, MAX_CHARGE - total), 0)
  total = total - old + new
  if oldest == nil then
    oldest = kmin_of(now, window, bucket)
  end
  redis.call('HSET', h, field, int(new), id .. ':t', int(total), id .. ':o', int(oldest))
  return total
end

-- Pacing interval and burst tolerance (T, tau) in us, or nil.
-- mode 0 off, 1 auto, 2 fixed. `limits` rows carry window, eff and `auto` (1 when the
-- limit counts requests over at most 60 s).
local function pacing(mode, interval, burst, pace, limits)
  if mode == 2 then
    local t = math.max(math.floor(interval * pace / 1000), 1)
    return t, (math.max(burst, 1) - 1) * t
  elseif mode == 1 then
    local t = nil
    for _, l in ipairs(limits) do
      if l.auto == 1 then
        local ti = math.floor(l.window / l.eff)
        if t == nil or ti > t then
          t = ti
        end
      end
    end
    if t == nil then
      return nil, nil
    end
    t = math.max(math.floor(t * pace / 1000), 1)
    local b = math.max(math.floor(1000000 / t), 1)
    return t, (b - 1) * t
  end
  return nil, nil
end

-- Keeps `key` alive for at least `ms` milliseconds (never shortens a longer TTL).
local function keep(key, ms)
  local cur = redis.call('PTTL', key)
  if cur < ms then
    redis.call('PEXPIRE', key, int(ms))
  end
end

-- Reads limit rows from ARGV starting at index `at`, `width` fields each:
-- id, window_us, bucket_us, limit, [charge, auto] or [estimate, actual].
local function read_limits(at, n, width)
  local rows = {}
  for i = 1, n do
    local b = at + (i - 1) * width
    rows[i] = {
      id = ARGV[b], window = tonumber(ARGV[b + 1]), bucket = tonumber(ARGV[b + 2]),
      limit = math.max(math.min(amount(ARGV[b + 3]), MAX_CHARGE), 1),
      a = amount(ARGV[b + 4]), b = amount(ARGV[b + 5]),
    }
  end
  return rows
end

-- The learned limits of state hash `st` for `rows`, with off, cool and pace.
local function read_state(st, rows)
  local names = { 'off', 'cool', 'pace' }
  for i, r in ipairs(rows) do
    names[3 + i] = 'eff:' .. r.id
  end
  local v = redis.call('HMGET', st, unpack(names))
  for i, r in ipairs(rows) do
    local learned = tonumber(v[3 + i])
    r.eff = r.limit
    if learned ~= nil and learned < r.limit then
      r.eff = math.max(learned, 1)
    end
  end
  return v[1], tonumber(v[2]) or 0, tonumber(v[3]) or 1000
end

-- Replaces a reservation's estimated charges with the actual ones (reconcile.lua, and
-- the reconciles an acquire carries). `rows` give each limit's id, window and bucket
-- width; `amounts` its estimated and actual charge, 2 per limit, in row order.
-- Returns 1 applied for the first time, 2 replaced an earlier reconcile, 3 the
-- reservation was released (nothing changed), 4 after the reconcile window (ignored).
-- reconcile.lua's header has the invariants.
local function reconcile_rows(h, mark, slot, window_ms, windows_ttl_ms, now, rows, amounts)
  local deadline = slot + window_ms * 1000
  if now > deadline then
    return 4
  end
  local mark_ttl_ms = math.max(math.ceil((deadline - now) / 1000), 1)
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
  for i, r in ipairs(rows) do
    local estimate, actual = amounts[2 * i - 1], amounts[2 * i]
    local was = estimate
    if previous then
      was = before[r.id] or 0
    end
    local delta = actual - was
    local total, oldest = evict(h, r.id, r.window, r.bucket, now)
    local k = math.floor(slot / r.bucket)
    if delta ~= 0 and k >= kmin_of(now, r.window, r.bucket) then
      add(h, r.id, k, delta, total, oldest, now, r.window, r.bucket)
      wrote = true
    elseif delta > 0 then
      add(h, r.id, math.floor(now / r.bucket), delta, total, oldest, now, r.window, r.bucket)
      wrote = true
    end
    applied[i] = r.id .. '=' .. int(actual)
  end
  if wrote then
    keep(h, windows_ttl_ms)
  end
  redis.call('SET', mark, table.concat(applied, ','), 'PX', int(mark_ttl_ms))
  if previous then
    return 2
  end
  return 1
end

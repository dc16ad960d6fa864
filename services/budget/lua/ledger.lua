-- Budget ledgers: the layout and helpers shared by every budget script (prepended when loaded).
--
-- A ledger is one limit over a window, kept in five keys under one hash tag:
--   KEYS[5i+1] window    ZSET  invocation id -> settled-at (ms, Redis server time); sliding only
--   KEYS[5i+2] reserved  ZSET  invocation id -> expires-at (ms, Redis server time)
--   KEYS[5i+3] amounts   HASH  invocation id -> amount (whole tokens, or micro-USD): what a
--                              reservation holds, then what it settled to while in the window
--   KEYS[5i+4] totals    HASH  used, reserved: running sums, so that every check is O(1);
--                              period: the start of the period `used` counts (aligned only)
--   KEYS[5i+5] holders   HASH  invocation id -> the token of the try (one run of the invocation
--                              by a gateway) that holds its reservation: only that try settles it
-- A window is sliding (the last window_ms: settled amounts leave one by one as they age) or
-- aligned (the current multiple of window_ms since the epoch, the UTC day for 86400000: `used`
-- starts again at 0 with each period, so a busy ledger keeps no entry per settled invocation).
-- Reservations leave `reserved` (and `holders`) when settled or when they expire. Every script
-- gives all five keys the same expiry, so a ledger expires as a whole once nothing in it counts
-- any more.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ledger(i)
  local b = 5 * i
  return {
    window = KEYS[b + 1], reserved = KEYS[b + 2], amounts = KEYS[b + 3], totals = KEYS[b + 4],
    holders = KEYS[b + 5],
  }
end

-- Members of a set scored below `before`, and the sum of their amounts.
local function below(set, amounts, before)
  local ids = redis.call('ZRANGEBYSCORE', set, '-inf', '(' .. before)
  local sum = 0
  for _, id in ipairs(ids) do
    sum = sum + (tonumber(redis.call('HGET', amounts, id)) or 0)
  end
  return ids, sum
end

-- Remove members scored below `before` from a set, its amounts (and `also`, a hash of the same
-- ids, when given) and the `field` total.
local function drop(set, amounts, totals, field, before, also)
  local ids, sum = below(set, amounts, before)
  if #ids == 0 then
    return
  end
  for _, id in ipairs(ids) do
    redis.call('HDEL', amounts, id)
    if also then
      redis.call('HDEL', also, id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', '(' .. before)
  redis.call('HINCRBY', totals, field, -sum)
end

-- Release expired reservations and take what no longer counts out of `used`.
local function age(k, now, window_ms, aligned)
  drop(k.reserved, k.amounts, k.totals, 'reserved', now + 1, k.holders)
  if not aligned then
    drop(k.window, k.amounts, k.totals, 'used', now - window_ms + 1)
    return
  end
  local start = now - now % window_ms
  if tonumber(redis.call('HGET', k.totals, 'period')) ~= start then
    redis.call('HSET', k.totals, 'period', start, 'used', 0)
  end
end

local function totals(k)
  local t = redis.call('HMGET', k.totals, 'used', 'reserved')
  return tonumber(t[1]) or 0, tonumber(t[2]) or 0
end

local function keep(k, ms, only_later)
  for _, key in ipairs({k.window, k.reserved, k.amounts, k.totals, k.holders}) do
    if only_later then
      redis.call('PEXPIRE', key, ms, 'GT')
    else
      redis.call('PEXPIRE', key, ms)
    end
  end
end

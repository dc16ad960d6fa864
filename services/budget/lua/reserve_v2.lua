-- reserve_v2: hold an invocation's worst case on every ledger at once, or on none, for one try.
--
-- KEYS: five per ledger (see ledger.lua), ledgers in order.
-- ARGV[1]: invocation id
-- ARGV[2]: reservation ttl (ms): an unsettled reservation is released after it
-- ARGV[3]: the try's token ('' for none): the hold is this try's, and only a settle carrying the
--   same token (or none) releases it
-- ARGV[4+4i .. 7+4i], for ledger i from 0: amount, limit, window_ms, aligned ('1' or '0')
-- Returns {refused, used_1, reserved_1, used_2, reserved_2, ...}: refused is 0 when every
--   ledger holds the amount now (a ledger that already holds this id, reserved or settled in
--   its window, is not charged twice), else the 1-based index of the first ledger where used +
--   reserved + amount would pass the limit, and then nothing was reserved anywhere.
--   used/reserved are each ledger's figures before this call, expired entries released.
-- Changed from reserve_v1: a reservation already held for this id (an earlier try, dead or
--   failed) is taken over by this try: its token replaces the earlier one and its expiry starts
--   again, so the earlier try's late release leaves it alone (its amount is kept, not added).

local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local token = ARGV[3]
local now = now_ms()
local out = {0}
local todo = {}
local held = {}
local kept = {}
for i = 0, #KEYS / 5 - 1 do
  local k = ledger(i)
  local a = 4 + 4 * i
  local amount, limit, window_ms = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  age(k, now, window_ms, ARGV[a + 3] == '1')
  local used, reserved = totals(k)
  out[#out + 1] = used
  out[#out + 1] = reserved
  if redis.call('ZSCORE', k.reserved, id) then
    held[#held + 1] = k
  elseif not redis.call('ZSCORE', k.window, id) then
    if out[1] == 0 and used + reserved + amount > limit then
      out[1] = i + 1
    end
    todo[#todo + 1] = {k = k, amount = amount}
  end
  kept[#kept + 1] = {k = k, ms = math.max(window_ms, ttl)}
end
-- Expiry is set once every key is written: PEXPIRE on a key not yet created does nothing, and a
-- first reservation never settled would otherwise leave its keys in Redis for good.
local function keep_all()
  for _, e in ipairs(kept) do
    keep(e.k, e.ms)
  end
end
if out[1] ~= 0 then
  keep_all()
  return out
end
local function hold_for_this_try(k)
  redis.call('ZADD', k.reserved, now + ttl, id)
  if token ~= '' then
    redis.call('HSET', k.holders, id, token)
  else
    redis.call('HDEL', k.holders, id)
  end
end
for _, k in ipairs(held) do
  hold_for_this_try(k)
end
for _, t in ipairs(todo) do
  hold_for_this_try(t.k)
  redis.call('HSET', t.k.amounts, id, t.amount)
  redis.call('HINCRBY', t.k.totals, 'reserved', t.amount)
end
keep_all()
return out

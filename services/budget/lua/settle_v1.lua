-- settle_v1: replace an invocation's reservation by what it actually used, on every ledger.
--
-- KEYS: four per ledger (see ledger.lua), ledgers in order.
-- ARGV[1]: invocation id
-- ARGV[2]: reservation ttl (ms), for the keys' expiry
-- ARGV[3+3i .. 5+3i], for ledger i from 0: actual amount, window_ms, aligned ('1' or '0')
-- Returns the number of ledgers settled. Only a held reservation settles: a ledger that holds
--   none for this id (settled already, or expired before the settle came) is left alone, so a
--   duplicate settle returns 0 and changes nothing.

local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local now = now_ms()
local settled = 0
for i = 0, #KEYS / 4 - 1 do
  local k = ledger(i)
  local a = 3 + 3 * i
  local actual, window_ms, aligned = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2] == '1'
  age(k, now, window_ms, aligned)
  if redis.call('ZREM', k.reserved, id) == 1 then
    redis.call('HINCRBY', k.totals, 'reserved', -(tonumber(redis.call('HGET', k.amounts, id)) or 0))
    if aligned then
      redis.call('HDEL', k.amounts, id)
    else
      redis.call('ZADD', k.window, now, id)
      redis.call('HSET', k.amounts, id, actual)
    end
    redis.call('HINCRBY', k.totals, 'used', actual)
    settled = settled + 1
  end
  keep(k, math.max(window_ms, ttl))
end
return settled

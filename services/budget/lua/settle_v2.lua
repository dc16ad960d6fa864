-- settle_v2: replace an invocation's reservation by what one try actually used, on every ledger.
--
-- KEYS: five per ledger (see ledger.lua), ledgers in order.
-- ARGV[1]: invocation id
-- ARGV[2]: reservation ttl (ms), for the keys' expiry
-- ARGV[3]: the try's token ('' for none): a reservation held by another try (one that took it
--   over with reserve_v2) is left alone
-- ARGV[4+3i .. 6+3i], for ledger i from 0: actual amount, window_ms, aligned ('1' or '0')
-- Returns the number of ledgers settled. Only a held reservation settles: a ledger that holds
--   none for this id (settled already, or expired before the settle came) is left alone, so a
--   duplicate settle returns 0 and changes nothing.
-- Changed from settle_v1: the token check; and a release (actual 0) leaves nothing in the
--   window, so that a retry of the id after it reserves anew (as a never-used id would).

local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local token = ARGV[3]
local now = now_ms()
local settled = 0
for i = 0, #KEYS / 5 - 1 do
  local k = ledger(i)
  local a = 4 + 3 * i
  local actual, window_ms, aligned = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2] == '1'
  age(k, now, window_ms, aligned)
  local holder = redis.call('HGET', k.holders, id)
  local mine = token == '' or not holder or holder == token
  if mine and redis.call('ZREM', k.reserved, id) == 1 then
    redis.call('HDEL', k.holders, id)
    redis.call('HINCRBY', k.totals, 'reserved', -(tonumber(redis.call('HGET', k.amounts, id)) or 0))
    if aligned or actual == 0 then
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

-- extend_v1: keep one try's reservation held for another ttl, on every ledger that holds it.
--
-- KEYS: five per ledger (see ledger.lua), ledgers in order.
-- ARGV[1]: invocation id
-- ARGV[2]: reservation ttl (ms): the hold now expires at the server's now + ttl
-- ARGV[3]: the try's token: only a reservation this try holds is extended
-- Returns the number of ledgers extended. A ledger whose reservation for this id has expired
--   (even if not yet released), was settled, or was taken over by another try is left alone:
--   an extend never brings back a hold, it only keeps one. Nothing is shortened: a hold's
--   expiry only moves later, and the keys' expiry too (PEXPIRE ... GT).

local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local token = ARGV[3]
local now = now_ms()
local extended = 0
for i = 0, #KEYS / 5 - 1 do
  local k = ledger(i)
  local expires = tonumber(redis.call('ZSCORE', k.reserved, id))
  if expires and expires > now and redis.call('HGET', k.holders, id) == token then
    redis.call('ZADD', k.reserved, 'XX', 'GT', now + ttl, id)
    keep(k, ttl, true)
    extended = extended + 1
  end
end
return extended

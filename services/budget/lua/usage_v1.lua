-- usage_v1: one ledger's figures now, without changing it (what has expired or aged out is
-- left for the next reserve or settle to remove, and not counted here).
--
-- KEYS: the ledger's five keys (see ledger.lua)
-- ARGV[1]: window_ms
-- ARGV[2]: aligned ('1' or '0')
-- Returns {used, reserved, in_flight}: amounts settled in the window, amounts reserved and not
--   expired, and how many reservations those are.

local k = ledger(0)
local now = now_ms()
local window_ms = tonumber(ARGV[1])
local used, reserved = totals(k)
if ARGV[2] == '1' then
  if tonumber(redis.call('HGET', k.totals, 'period')) ~= now - now % window_ms then
    used = 0
  end
else
  local _, aged = below(k.window, k.amounts, now - window_ms + 1)
  used = used - aged
end
local expired_ids, expired = below(k.reserved, k.amounts, now + 1)
return {used, reserved - expired, redis.call('ZCARD', k.reserved) - #expired_ids}

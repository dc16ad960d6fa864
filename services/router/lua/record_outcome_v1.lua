--[[ record_outcome_v1: what one provider call's outcome does to shared provider state.

Adds the call's tokens to this minute's provider and model token counts. A success closes the
circuit (resets consecutive failures). A 429 starts the provider/model cooldown. A server error,
timeout, connection failure or malformed answer counts one consecutive failure, and opens the
provider's circuit when the count reaches the threshold. Client errors change nothing else.

KEYS[1] cooldown key     KEYS[2] circuit failures key     KEYS[3] circuit-open key
KEYS[4] provider quota hash                               KEYS[5] model quota hash
ARGV[1] kind: "ok" | "rate_limited" | "failure" | "neutral"
ARGV[2] tokens used     ARGV[3] cooldown ms (0 = none)
ARGV[4] failures that open the circuit     ARGV[5] circuit open ms
Returns {consecutive failures, 1 if the circuit is open else 0}
]]

local now = redis.call('TIME')
local minute = tostring(math.floor(tonumber(now[1]) / 60))
local kind = ARGV[1]
local tokens = tonumber(ARGV[2])

if tokens > 0 then
  for _, key in ipairs({KEYS[4], KEYS[5]}) do
    if redis.call('HGET', key, 'm') ~= minute then
      redis.call('HSET', key, 'm', minute, 'req', 0, 'tok', tokens)
    else
      redis.call('HINCRBY', key, 'tok', tokens)
    end
    redis.call('EXPIRE', key, 120)
  end
end

local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if kind == 'ok' then
  redis.call('DEL', KEYS[2])
  failures = 0
elseif kind == 'rate_limited' then
  local ms = tonumber(ARGV[3])
  if ms > 0 then redis.call('SET', KEYS[1], '429', 'PX', ms) end
elseif kind == 'failure' then
  failures = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 600)
  if failures >= tonumber(ARGV[4]) then
    redis.call('SET', KEYS[3], tostring(failures), 'PX', tonumber(ARGV[5]))
  end
end
return {failures, redis.call('EXISTS', KEYS[3])}

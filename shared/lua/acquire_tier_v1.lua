--[[ acquire_tier_v1: pick the first usable tier of a chain and debit one request from its quotas.

Walks the tiers in order. A tier is skipped when its provider is blocked by an operator, its
provider/model is cooling down after a 429, its provider's circuit is open, or a request would
exceed a requests-per-minute quota, or the tokens already used this minute have reached a
tokens-per-minute quota (of the provider or of the model). The first tier not skipped is
acquired: one request is counted against both quotas, all or nothing. Quotas are fixed
one-minute windows on Redis server time; each counter hash holds its minute and resets when the
minute changes, and expires two minutes after its last write.

KEYS[1]            hash of blocked providers (name -> reason)
KEYS[2 + 4(i-1)..] for tier i: cooldown key, circuit-open key, provider quota hash, model quota hash
ARGV[1]            number of tiers n
ARGV[2 + 5(i-1)..] for tier i: provider name, provider rpm, provider tpm, model rpm, model tpm
                   (0 = no quota)
Returns            a flat array, two entries per tier examined, in order:
                   status ("ok" | "blocked" | "cooldown" | "circuit_open" | "local_quota"), detail;
                   it stops after the first "ok".
]]

local now = redis.call('TIME')
local minute = tostring(math.floor(tonumber(now[1]) / 60))
local n = tonumber(ARGV[1])
local out = {}

local function counts(key)
  local m, req, tok = unpack(redis.call('HMGET', key, 'm', 'req', 'tok'))
  if m ~= minute then return 0, 0 end
  return tonumber(req) or 0, tonumber(tok) or 0
end

local function over(key, rpm, tpm, label)
  local req, tok = counts(key)
  if rpm > 0 and req + 1 > rpm then return label .. ' requests ' .. req .. '/' .. rpm .. ' per minute' end
  if tpm > 0 and tok >= tpm then return label .. ' tokens ' .. tok .. '/' .. tpm .. ' per minute' end
  return nil
end

local function debit(key)
  local m = redis.call('HGET', key, 'm')
  if m ~= minute then
    redis.call('HSET', key, 'm', minute, 'req', 1, 'tok', 0)
  else
    redis.call('HINCRBY', key, 'req', 1)
  end
  redis.call('EXPIRE', key, 120)
end

for i = 1, n do
  local k = 2 + 4 * (i - 1)
  local a = 2 + 5 * (i - 1)
  local provider = ARGV[a]
  local reason = redis.call('HGET', KEYS[1], provider)
  if reason then
    table.insert(out, 'blocked'); table.insert(out, reason)
  elseif redis.call('EXISTS', KEYS[k]) == 1 then
    table.insert(out, 'cooldown'); table.insert(out, tostring(redis.call('PTTL', KEYS[k])))
  elseif redis.call('EXISTS', KEYS[k + 1]) == 1 then
    table.insert(out, 'circuit_open'); table.insert(out, tostring(redis.call('PTTL', KEYS[k + 1])))
  else
    local why = over(KEYS[k + 2], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), 'provider')
      or over(KEYS[k + 3], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), 'model')
    if why then
      table.insert(out, 'local_quota'); table.insert(out, why)
    else
      debit(KEYS[k + 2]); debit(KEYS[k + 3])
      table.insert(out, 'ok'); table.insert(out, '')
      return out
    end
  end
end
return out

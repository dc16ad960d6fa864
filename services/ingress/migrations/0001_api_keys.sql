-- The HTTP ingress's API keys: each maps a caller to an agent identity. Only the SHA-256 of a key
-- is stored (keys are 256-bit random, so an unsalted hash is enough); the key itself is shown
-- once, to the operator who issued it. Issue and revocation keep who did it and why.

create table ingress_keys (
    env text not null,
    key_id text not null,
    key_hash text not null,
    prefix text not null,                      -- the key's first characters, to tell keys apart
    agent text not null,
    created_at timestamptz not null default now(),
    created_by text not null,
    reason text not null,
    revoked_at timestamptz,
    revoked_by text,
    revoke_reason text,
    primary key (env, key_id)
);

create unique index ingress_keys_hash on ingress_keys (key_hash);

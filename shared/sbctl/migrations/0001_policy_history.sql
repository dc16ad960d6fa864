-- The history of record of every environment's policy. Written by sbctl before a version is
-- distributed through NATS KV (so no version can be live without a row), kept without limit.

create table if not exists policy_history (
    env                   text        not null,
    version               integer     not null,
    applied_at            timestamptz not null,
    applied_by            text        not null,
    by_source             text        not null,  -- configured | os | verified | imported
    action                text        not null,  -- apply | rollback | promote | import
    reason                text        not null default '',
    forced                boolean     not null default false,  -- a protected env's guard overridden
    promoted_from_env     text,
    promoted_from_version integer,
    rollback_of           integer,
    checksum              text        not null,
    source                text        not null default '',
    policy                jsonb       not null,
    state                 text        not null default 'recorded',  -- recorded | distributed | failed
    primary key (env, version)
);
create index if not exists policy_history_by_time on policy_history (env, applied_at);

-- Per-environment governance settings: whether direct applies are refused, how long a version
-- must have run in the environment it is promoted from.
create table if not exists policy_envs (
    env        text        primary key,
    protected  boolean     not null default false,
    soak_s     integer     not null default 600,
    changed_by text        not null,
    changed_at timestamptz not null default now(),
    reason     text        not null default ''
);

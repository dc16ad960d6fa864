-- The audit log: every event as published, plus one row per invocation for fast lookups.
-- Owned by the recorder, its only writer. Rows carry their environment (SB_ENV).

create table if not exists events (
    env           text        not null,
    event_id      text        not null,
    kind          text        not null,
    ts            timestamptz not null,
    service       text,
    invocation_id text,
    trace_id      text,
    body          jsonb       not null,
    recorded_at   timestamptz not null default now(),
    primary key (env, event_id)
);
create index if not exists events_by_invocation on events (env, invocation_id, ts) where invocation_id is not null;
create index if not exists events_by_kind_ts on events (env, kind, ts);
create index if not exists events_by_ts on events (ts);

create table if not exists invocations (
    env               text        not null,
    invocation_id     text        not null,
    ts                timestamptz not null,
    workflow          text,
    session_id        text,
    agent             text,
    status            text,
    provider          text,
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    latency_ms        double precision,
    error_code        text,
    trace_id          text,
    config_version    text,
    body              jsonb       not null,
    primary key (env, invocation_id)
);
create index if not exists invocations_by_ts on invocations (env, ts);
create index if not exists invocations_by_workflow on invocations (env, workflow, ts);

create table if not exists config_versions (
    env        text        not null,
    version    integer     not null,
    applied_at timestamptz not null,
    applied_by text,
    checksum   text        not null,
    source     text,
    policy     jsonb       not null,
    primary key (env, version)
);

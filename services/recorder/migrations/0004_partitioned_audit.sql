-- The audit log, partitioned so that expiry drops whole tables instead of deleting rows.
--
-- Layout: `events` and `invocations` are LIST-partitioned by environment, and each
-- environment's table is RANGE-partitioned by UTC day of `ts`:
--
--     events                      (partition by list (env))
--       events_prod_1a2b3c4d      (for values in ('prod'); partition by range (ts))
--         events_prod_1a2b3c4d_20261129   (one UTC day)
--
-- Why environment first, then day: several environments (staging and production, every test)
-- may share one database, and retention must only ever remove its own environment's rows. With
-- the day on the outside, one day's table would hold every environment and could not be dropped
-- for one of them. With the environment on the outside, a recorder drops exactly
-- `<table>_<its env>_<day>` and nothing else, and the lock it takes to do so (on its own
-- environment's table) never stalls another environment's writes or reads.
--
-- Table names are `<table>_<env, sanitised, 20 chars>_<md5(env), 8 hex>[_<YYYYMMDD>]`, so they are
-- readable and never collide. Partitions are created by `audit_ensure_partitions` (the recorder
-- calls it ahead of time, and for the day of any event that arrives for a day it has not seen)
-- and removed by `audit_drop_partitions`; both take a per-environment advisory lock, so several
-- recorders of one environment can run them at once. Both live here, in SQL, so that this
-- migration (which moves existing rows) and the recorder share one definition.
--
-- Keys include `ts` because PostgreSQL requires the partition key in every unique index.
-- A replayed event has the same `ts`, so `on conflict` still makes replays no-ops; an invocation
-- event with a later `ts` for the same invocation adds a row, and readers take the newest.
-- `cost_usd` is new: what the answering model's prices make of the tokens, for spend questions
-- answered from SQL.

create or replace function audit_table(p_table text, p_env text) returns text
language sql immutable as $$
    select p_table || '_' || left(regexp_replace(lower(p_env), '[^a-z0-9_]', '_', 'g'), 20)
           || '_' || left(md5(p_env), 8)
$$;

create or replace function audit_ensure_partitions(p_env text, p_from date, p_to date) returns integer
language plpgsql as $$
declare
    t text;
    parent text;
    child text;
    d date;
    created integer := 0;
begin
    perform pg_advisory_xact_lock(hashtext('switchboard.audit_partitions'), hashtext(p_env));
    foreach t in array array['events', 'invocations'] loop
        parent := audit_table(t, p_env);
        if to_regclass(format('%I', parent)) is null then
            execute format('create table %I partition of %I for values in (%L) partition by range (ts)',
                           parent, t, p_env);
            execute format('comment on table %I is %L', parent, 'audit ' || t || ' of environment ' || p_env);
            created := created + 1;
        end if;
        d := p_from;
        while d <= p_to loop
            child := parent || '_' || to_char(d, 'YYYYMMDD');
            if to_regclass(format('%I', child)) is null then
                execute format('create table %I partition of %I for values from (%L) to (%L)',
                               child, parent,
                               d::timestamp at time zone 'UTC', (d + 1)::timestamp at time zone 'UTC');
                created := created + 1;
            end if;
            d := d + 1;
        end loop;
    end loop;
    return created;
end $$;

-- Drop the environment's day partitions of `p_table` whose whole day ends at or before p_cutoff.
create or replace function audit_drop_partitions(p_env text, p_table text, p_cutoff timestamptz)
returns setof text
language plpgsql as $$
declare
    parent text := audit_table(p_table, p_env);
    r record;
begin
    if p_table not in ('events', 'invocations') then
        raise exception 'not an audit table: %', p_table;
    end if;
    perform pg_advisory_xact_lock(hashtext('switchboard.audit_partitions'), hashtext(p_env));
    if to_regclass(format('%I', parent)) is null then
        return;
    end if;
    for r in
        select c.relname
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = to_regclass(format('%I', parent))
          and c.relname ~ '_[0-9]{8}$'
          and (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp at time zone 'UTC' <= p_cutoff
        order by c.relname
    loop
        -- Parent first, as readers and writers lock it: the same order everywhere, no deadlock.
        execute format('lock table %I in access exclusive mode', parent);
        execute format('drop table %I', r.relname);
        return next r.relname;
    end loop;
end $$;

-- Remove an environment's audit rows altogether (an environment being decommissioned).
create or replace function audit_drop_env(p_env text) returns void
language plpgsql as $$
declare
    t text;
begin
    perform pg_advisory_xact_lock(hashtext('switchboard.audit_partitions'), hashtext(p_env));
    foreach t in array array['events', 'invocations'] loop
        execute format('drop table if exists %I', audit_table(t, p_env));
    end loop;
end $$;

-- Move the unpartitioned tables aside, create the partitioned ones, copy the rows over.
alter table events rename to events_unpartitioned;
alter table invocations rename to invocations_unpartitioned;
drop index if exists events_by_invocation;
drop index if exists events_by_kind_ts;
drop index if exists events_by_ts;
drop index if exists invocations_by_ts;
drop index if exists invocations_by_workflow;

create table events (
    env           text        not null,
    event_id      text        not null,
    kind          text        not null,
    ts            timestamptz not null,
    service       text,
    invocation_id text,
    trace_id      text,
    body          jsonb       not null,
    recorded_at   timestamptz not null default now(),
    primary key (env, event_id, ts)
) partition by list (env);
create index events_by_invocation on events (env, invocation_id, ts) where invocation_id is not null;
create index events_by_kind_ts on events (env, kind, ts);

create table invocations (
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
    cost_usd          double precision,
    primary key (env, invocation_id, ts)
) partition by list (env);
create index invocations_by_ts on invocations (env, ts);
create index invocations_by_workflow on invocations (env, workflow, ts);

do $$
declare
    r record;
begin
    for r in
        select env, min(ts)::date as first_day, max(ts)::date as last_day
        from (select env, (ts at time zone 'UTC') as ts from events_unpartitioned
              union all
              select env, (ts at time zone 'UTC') from invocations_unpartitioned) s
        group by env
    loop
        perform audit_ensure_partitions(r.env, r.first_day, r.last_day);
    end loop;
end $$;

insert into events select * from events_unpartitioned;
insert into invocations (env, invocation_id, ts, workflow, session_id, agent, status, provider, model,
                         prompt_tokens, completion_tokens, latency_ms, error_code, trace_id,
                         config_version, body)
select env, invocation_id, ts, workflow, session_id, agent, status, provider, model,
       prompt_tokens, completion_tokens, latency_ms, error_code, trace_id, config_version, body
from invocations_unpartitioned;
drop table events_unpartitioned;
drop table invocations_unpartitioned;

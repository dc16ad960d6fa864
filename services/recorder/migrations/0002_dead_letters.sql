-- Events the audit log cannot hold (unreadable, or refused by PostgreSQL, e.g. a string with
-- NUL), kept byte for byte with the reason, so that one bad event never holds back the ones
-- after it and nothing is silently dropped. Owned by the recorder, its only writer.

create table if not exists dead_letters (
    env       text        not null,
    id        bigserial   not null,
    failed_at timestamptz not null default now(),
    subject   text        not null,
    event_id  text,
    kind      text,
    reason    text        not null,
    raw       bytea       not null,
    primary key (env, id)
);
create index if not exists dead_letters_by_time on dead_letters (env, failed_at);

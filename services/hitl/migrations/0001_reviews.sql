-- The hitl service's tables: reviews (one per gate firing; an escalation closes one and opens the
-- next), reviewers (bearer tokens stored as SHA-256 hashes), and the append-only audit trail.
-- JSON documents that come from agents are kept as text: jsonb cannot hold \u0000.

create table hitl_reviews (
    id text primary key,
    env text not null,
    invocation_id text not null,
    stage text not null,                       -- pre | post
    workflow text not null,
    agent text,
    rule text not null,
    matched text not null,                    -- field -> the value that met the rule
    config_version text,
    queue text not null,
    owner text not null,
    queue_spec jsonb not null,                 -- the queue's policy when the review entered it
    state text not null default 'pending',     -- pending | approved | rejected | escalated
    request text not null,                    -- the invocation request as the agent sent it
    held text,                                -- post gate: the result held back from the agent
    trace_id text,
    requested_at timestamptz not null default now(),
    sla_deadline timestamptz not null,
    deadline timestamptz not null,
    sla_breached boolean not null default false,
    claimed_by text,
    claimed_at timestamptz,
    approvals jsonb not null default '[]',     -- [{reviewer, at}] while approvals_required > 1
    decided_at timestamptz,
    decided_by text,
    decided_kind text,                         -- human | system
    decision text,                             -- approved | rejected | timeout | escalated
    reason text,
    edited_messages text,                     -- approve with edits (pre): what goes to the model
    edited_output text,                        -- approve with edits (post): what reaches the agent
    escalated_from text references hitl_reviews (id),
    escalated_to text,
    dispatch_after timestamptz,                -- decided: when a gateway may be (re)asked to act
    acted_at timestamptz,
    action text,                               -- sent to the model | output released | rejected
    outcome text,                              -- the final status that followed
    result text                               -- the final result, retrievable by invocation id
);

-- Opening a review is idempotent per invocation and stage (a gateway may ask twice).
create unique index hitl_reviews_open_once on hitl_reviews (env, invocation_id, stage)
    where escalated_from is null;
create index hitl_reviews_by_invocation on hitl_reviews (env, invocation_id);
create index hitl_reviews_pending on hitl_reviews (env, queue, requested_at) where state = 'pending';
create index hitl_reviews_due on hitl_reviews (env, deadline) where state = 'pending';
create index hitl_reviews_to_act on hitl_reviews (env, dispatch_after)
    where acted_at is null and state in ('approved', 'rejected');

create table hitl_reviewers (
    env text not null,
    name text not null,
    token_hash text not null unique,
    queues text[] not null,
    created_at timestamptz not null default now(),
    created_by text not null,
    revoked_at timestamptz,
    revoked_by text,
    primary key (env, name)
);

create table hitl_audit (
    id bigserial primary key,
    env text not null,
    ts timestamptz not null default now(),
    review_id text not null references hitl_reviews (id),
    invocation_id text not null,
    event text not null,        -- requested | claimed | approval | decided | timed_out | escalated |
                                -- acted | extended | reassigned
    queue text not null,
    owner text not null,
    sla_deadline timestamptz not null,
    deadline timestamptz not null,
    actor text not null,
    actor_kind text not null,   -- human | system | operator
    decision text,
    reason text,
    action text,
    outcome text
);
create index hitl_audit_by_time on hitl_audit (env, ts);
create index hitl_audit_by_review on hitl_audit (review_id);

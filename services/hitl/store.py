"""The hitl service's tables (reviews, reviewers, audit): every state change of a review is one
transaction that locks its row, checks its state, updates it and writes the audit row, so that
two reviewers, two replicas or a reviewer and a timeout can never both act on one review."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from shared.contracts import DeciderKind, OpenReview, Reviewer, ReviewState
from shared.review_policy import QueueSpec
from switchboard_sdk import errors

Row = asyncpg.Record


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _load(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def epoch(ts: datetime | None) -> float | None:
    return ts.timestamp() if ts is not None else None


def token_hash(token: str) -> str:
    """Tokens are 256 random bits: a plain SHA-256 is enough to make a stolen table useless."""
    return hashlib.sha256(token.encode()).hexdigest()


_AUDIT = """insert into hitl_audit (env, review_id, invocation_id, event, queue, owner, sla_deadline,
    deadline, actor, actor_kind, decision, reason, action, outcome)
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"""


async def audit(conn, row: Row, event: str, actor: str, actor_kind: str, **fields: str | None) -> None:
    await conn.execute(
        _AUDIT,
        row["env"],
        row["id"],
        row["invocation_id"],
        event,
        row["queue"],
        row["owner"],
        row["sla_deadline"],
        row["deadline"],
        actor,
        actor_kind,
        fields.get("decision"),
        fields.get("reason"),
        fields.get("action"),
        fields.get("outcome"),
    )


_INSERT = """insert into hitl_reviews (id, env, invocation_id, stage, workflow, agent, rule, matched,
    config_version, queue, owner, queue_spec, request, held, trace_id, sla_deadline, deadline,
    escalated_from)
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
            now() + make_interval(secs => $16), now() + make_interval(secs => $17), $18)"""


# A review as the reviewers see it: with its age and whether it is past its SLA.
_AGED = (
    "select *, extract(epoch from now() - requested_at) as age_s, sla_deadline <= now() as late"
    " from hitl_reviews"
)

_AUDIT_ROWS = (  # audit rows with their review's fields, as services/hitl/export.py writes them
    "select a.*, r.workflow, r.agent, r.stage, r.rule, r.matched, r.config_version, r.requested_at,"
    " r.claimed_at, r.decided_at, r.acted_at, r.request"
    " from hitl_audit a join hitl_reviews r on r.id = a.review_id"
)
# The decided reviews of a history query: $1 env, then the fields of HistoryQuery in order.
_HISTORY = (
    " where env = $1 and state <> 'pending' and decided_at >= $2 and decided_at < $3"
    " and queue = any($4) and ($5::text is null or $5 = any(string_to_array(decided_by, ',')))"
    " and ($6::text is null or decision = $6)"
)


class HistoryQuery(NamedTuple):
    since: datetime
    until: datetime
    queues: list[str]
    reviewer: str | None
    decision: str | None


class Store:
    def __init__(self, pool: asyncpg.Pool, env: str) -> None:
        self.pool = pool
        self.env = env

    # --- opening -----------------------------------------------------------------------

    async def open(self, req: OpenReview, spec: QueueSpec) -> Row:
        """Store a review (once per invocation and stage; a repeated ask returns the first)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _INSERT + " on conflict (env, invocation_id, stage) where escalated_from is null do nothing"
                " returning *",
                uuid.uuid4().hex,
                self.env,
                req.invocation_id,
                req.stage.value,
                req.request.workflow,
                req.request.agent,
                req.rule,
                _json(req.matched),
                req.config_version,
                req.queue,
                spec.owner,
                _json(spec.model_dump(mode="json")),
                req.request.model_dump_json(),
                req.held.model_dump_json() if req.held else None,
                req.trace_id,
                spec.sla_s,
                spec.timeout_s,
                None,
            )
            if row is None:
                return await conn.fetchrow(
                    "select * from hitl_reviews where env = $1 and invocation_id = $2 and stage = $3"
                    " and escalated_from is null",
                    self.env,
                    req.invocation_id,
                    req.stage.value,
                )
            await audit(
                conn, row, "requested", "gateway", DeciderKind.SYSTEM.value, action=f"held ({req.stage})"
            )
            return row

    async def _escalate(self, conn, row: Row, target: str, spec: QueueSpec, actor: str, kind: str, why: str):
        """Close `row` and open its continuation in `target`, whose clock starts now."""
        new = await conn.fetchrow(
            _INSERT + " returning *",
            uuid.uuid4().hex,
            self.env,
            row["invocation_id"],
            row["stage"],
            row["workflow"],
            row["agent"],
            row["rule"],
            row["matched"],
            row["config_version"],
            target,
            spec.owner,
            _json(spec.model_dump(mode="json")),
            row["request"],
            row["held"],
            row["trace_id"],
            spec.sla_s,
            spec.timeout_s,
            row["id"],
        )
        closed = await conn.fetchrow(
            "update hitl_reviews set state = 'escalated', decided_at = now(), decided_by = $2,"
            " decided_kind = $3, decision = 'escalated', reason = $4, escalated_to = $5"
            " where id = $1 returning *",
            row["id"],
            actor,
            kind,
            why,
            new["id"],
        )
        await audit(
            conn,
            closed,
            "escalated",
            actor,
            kind,
            decision="escalated",
            reason=why,
            action=f"escalated to {target}",
        )
        await audit(conn, new, "requested", actor, kind, reason=why, action=f"escalated from {row['queue']}")
        return new

    # --- reading -----------------------------------------------------------------------

    async def get(self, review_id: str) -> Row | None:
        return await self.pool.fetchrow(
            _AGED + " where env = $1 and id = $2",
            self.env,
            review_id,
        )

    async def latest(self, invocation_id: str) -> Row | None:
        return await self.pool.fetchrow(
            "select * from hitl_reviews where env = $1 and invocation_id = $2"
            " order by requested_at desc, decided_at desc nulls first limit 1",
            self.env,
            invocation_id,
        )

    async def pending(self, queue: str, limit: int = 100) -> list[Row]:
        return await self.pool.fetch(
            _AGED + " where env = $1 and queue = $2 and state = 'pending' order by requested_at, id limit $3",
            self.env,
            queue,
            limit,
        )

    async def queue_stats(self) -> dict[str, Row]:
        rows = await self.pool.fetch(
            "select queue, count(*) as depth, extract(epoch from now() - min(requested_at)) as oldest_s,"
            " count(*) filter (where sla_deadline <= now()) as late"
            " from hitl_reviews where env = $1 and state = 'pending' group by queue",
            self.env,
        )
        return {r["queue"]: r for r in rows}

    # --- reviewers' decisions ----------------------------------------------------------

    async def act(
        self,
        review_id: str,
        reviewer: str,
        queues: frozenset[str],
        verb: str,
        *,
        reason: str | None = None,
        edited_messages: list[dict] | None = None,
        edited_output: str | None = None,
        escalate: tuple[str, QueueSpec] | None = None,
    ) -> Row:
        """claim | approve | reject | escalate, by a human reviewer; raises NotFound (404),
        Forbidden (403), Conflict (409) or InvalidRequest (422)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "select * from hitl_reviews where env = $1 and id = $2 for update", self.env, review_id
            )
            if row is None:
                raise errors.NotFound(f"no review {review_id}")
            if row["queue"] not in queues:
                raise errors.Forbidden(f"reviewer {reviewer!r} does not review queue {row['queue']!r}")
            if row["state"] != ReviewState.PENDING:
                raise errors.Conflict(_closed_message(row))
            human = DeciderKind.HUMAN.value
            if verb == "claim":
                if row["claimed_by"] not in (None, reviewer):
                    raise errors.Conflict(f"review {review_id} is claimed by {row['claimed_by']!r}")
                row = await conn.fetchrow(
                    "update hitl_reviews set claimed_by = $2, claimed_at = coalesce(claimed_at, now())"
                    " where id = $1 returning *",
                    review_id,
                    reviewer,
                )
                await audit(conn, row, "claimed", reviewer, human)
                return row
            if verb == "escalate":
                assert escalate is not None
                target, spec = escalate
                return await self._escalate(conn, row, target, spec, reviewer, human, reason or "escalated")
            if verb == "reject":
                row = await conn.fetchrow(
                    "update hitl_reviews set state = 'rejected', decided_at = now(), decided_by = $2,"
                    " decided_kind = 'human', decision = 'rejected', reason = $3, dispatch_after = now()"
                    " where id = $1 returning *",
                    review_id,
                    reviewer,
                    reason,
                )
                await audit(conn, row, "decided", reviewer, human, decision="rejected", reason=reason)
                return row
            # approve (with edits, perhaps)
            if edited_messages is not None and row["stage"] != "pre":
                raise errors.InvalidRequest("edited_messages applies to a pre-stage review only")
            if edited_output is not None and row["stage"] != "post":
                raise errors.InvalidRequest("edited_output applies to a post-stage review only")
            required = _load(row["queue_spec"]).get("approvals_required", 1)
            approvals = _load(row["approvals"])
            if any(a["reviewer"] == reviewer for a in approvals):
                raise errors.Conflict(
                    f"review {review_id} already has {reviewer!r}'s approval; it needs another reviewer"
                )
            approvals.append({"reviewer": reviewer, "at": datetime.now(UTC).isoformat()})
            done = len(approvals) >= required
            row = await conn.fetchrow(
                "update hitl_reviews set approvals = $2,"
                " edited_messages = coalesce($3, edited_messages),"
                " edited_output = coalesce($4, edited_output),"
                " state = case when $5 then 'approved' else state end,"
                " decided_at = case when $5 then now() end, decided_by = case when $5 then $6 end,"
                " decided_kind = case when $5 then 'human' end, decision = case when $5 then 'approved' end,"
                " reason = case when $5 then $7 end, dispatch_after = case when $5 then now() end"
                " where id = $1 returning *",
                review_id,
                _json(approvals),
                _json(edited_messages) if edited_messages is not None else None,
                edited_output,
                done,
                ",".join(a["reviewer"] for a in approvals),
                reason,
            )
            edited = edited_messages is not None or edited_output is not None
            await audit(
                conn,
                row,
                "decided" if done else "approval",
                reviewer,
                human,
                decision="approved" if done else f"approval {len(approvals)} of {required}",
                reason=reason,
                action="with edits" if edited else None,
            )
            return row

    # --- the system's decisions (timeouts) and acting on decisions ------------------------

    async def expire_due(self, queues: dict[str, QueueSpec], limit: int = 50) -> list[tuple[Row, str]]:
        """Apply the timeout action of every pending review past its deadline, each exactly once
        however many replicas sweep: rows are locked and skipped if another replica holds them."""
        done = []
        system = DeciderKind.SYSTEM.value
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "select * from hitl_reviews where env = $1 and state = 'pending' and deadline <= now()"
                " order by deadline limit $2 for update skip locked",
                self.env,
                limit,
            )
            for row in rows:
                spec = QueueSpec.model_validate(_load(row["queue_spec"]))
                action = spec.on_timeout.value
                why = f"timed out after {spec.timeout_s}s in queue {row['queue']} (on_timeout: {action})"
                if action == "escalate":
                    target = queues.get(spec.escalate_to or "")
                    if target is not None:
                        await self._escalate(conn, row, spec.escalate_to, target, "system", system, why)
                        done.append((row, "escalated"))
                        continue
                    action, why = "reject", f"{why}; queue {spec.escalate_to!r} is not in policy, so rejected"
                state = "approved" if action == "approve" else "rejected"
                row = await conn.fetchrow(
                    "update hitl_reviews set state = $2, decided_at = now(), decided_by = 'system',"
                    " decided_kind = 'system', decision = 'timeout', reason = $3, dispatch_after = now()"
                    " where id = $1 returning *",
                    row["id"],
                    state,
                    why,
                )
                await audit(
                    conn, row, "timed_out", "system", system, decision="timeout", reason=why, action=state
                )
                done.append((row, "timeout"))
        return done

    async def sla_breaches(self) -> list[str]:
        """Queues of pending reviews that just went past their SLA (each counted once)."""
        rows = await self.pool.fetch(
            "update hitl_reviews set sla_breached = true where env = $1 and state = 'pending'"
            " and not sla_breached and sla_deadline <= now() returning queue",
            self.env,
        )
        return [r["queue"] for r in rows]

    async def take_decided(self, lease_s: float, limit: int = 16) -> list[Row]:
        """Decided reviews not yet acted on, leased to this replica for `lease_s`."""
        return await self.pool.fetch(
            "update hitl_reviews set dispatch_after = now() + make_interval(secs => $2)"
            " where id in (select id from hitl_reviews where env = $1 and acted_at is null"
            "   and state in ('approved', 'rejected') and dispatch_after <= now()"
            "   order by dispatch_after limit $3 for update skip locked)"
            " returning *",
            self.env,
            lease_s,
            limit,
        )

    async def retry_soon(self, review_id: str, after_s: float) -> None:
        """No gateway could take a decided review: ask again soon, not at the lease's end."""
        await self.pool.execute(
            "update hitl_reviews set dispatch_after = now() + make_interval(secs => $2)"
            " where id = $1 and acted_at is null",
            review_id,
            after_s,
        )

    async def acted(self, review_id: str, action: str, outcome: str, result_json: str) -> Row | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "update hitl_reviews set acted_at = now(), action = $2, outcome = $3, result = $4"
                " where id = $1 and acted_at is null returning *",
                review_id,
                action,
                outcome,
                result_json,
            )
            if row is not None:
                await audit(
                    conn, row, "acted", "gateway", DeciderKind.SYSTEM.value, action=action, outcome=outcome
                )
            return row

    # --- operators ---------------------------------------------------------------------

    async def extend(self, queue: str, by_s: int, actor: str, reason: str) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "update hitl_reviews set deadline = deadline + make_interval(secs => $3)"
                " where env = $1 and queue = $2 and state = 'pending' returning *",
                self.env,
                queue,
                by_s,
            )
            for row in rows:
                await audit(
                    conn, row, "extended", actor, "operator", reason=reason, action=f"deadline +{by_s}s"
                )
            return len(rows)

    async def reassign(self, queue: str, target: str, spec: QueueSpec, actor: str, reason: str) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "update hitl_reviews set queue = $3, owner = $4, queue_spec = $5,"
                " sla_deadline = now() + make_interval(secs => $6),"
                " deadline = now() + make_interval(secs => $7),"
                " sla_breached = false, claimed_by = null, claimed_at = null, approvals = '[]'"
                " where env = $1 and queue = $2 and state = 'pending' returning *",
                self.env,
                queue,
                target,
                spec.owner,
                _json(spec.model_dump(mode="json")),
                spec.sla_s,
                spec.timeout_s,
            )
            for row in rows:
                await audit(
                    conn, row, "reassigned", actor, "operator", reason=reason, action=f"moved from {queue}"
                )
            return len(rows)

    async def add_reviewer(self, name: str, queues: list[str], by: str) -> tuple[str, Row]:
        token = "sbr_" + secrets.token_urlsafe(32)
        row = await self.pool.fetchrow(
            "insert into hitl_reviewers (env, name, token_hash, queues, created_by)"
            " values ($1, $2, $3, $4, $5)"
            " on conflict (env, name) do update set token_hash = excluded.token_hash,"
            "  queues = excluded.queues,"
            "  created_at = now(), created_by = excluded.created_by, revoked_at = null, revoked_by = null"
            " where hitl_reviewers.revoked_at is not null returning *",
            self.env,
            name,
            token_hash(token),
            queues,
            by,
        )
        if row is None:
            raise errors.Conflict(f"reviewer {name!r} exists; revoke it first to issue a new token")
        return token, row

    async def revoke_reviewer(self, name: str, by: str) -> Row:
        row = await self.pool.fetchrow(
            "update hitl_reviewers set revoked_at = now(), revoked_by = $3"
            " where env = $1 and name = $2 and revoked_at is null returning *",
            self.env,
            name,
            by,
        )
        if row is None:
            raise errors.NotFound(f"no active reviewer {name!r}")
        return row

    async def reviewers(self) -> list[Row]:
        return await self.pool.fetch("select * from hitl_reviewers where env = $1 order by name", self.env)

    async def reviewer_by_token(self, token: str) -> Row | None:
        return await self.pool.fetchrow(
            "select * from hitl_reviewers where env = $1 and token_hash = $2 and revoked_at is null",
            self.env,
            token_hash(token),
        )

    async def audit_rows(
        self, since: datetime, until: datetime, queues: list[str] | None = None
    ) -> list[Row]:
        return await self.pool.fetch(
            _AUDIT_ROWS + " where a.env = $1 and a.ts >= $2 and a.ts < $3"
            " and ($4::text[] is null or a.queue = any($4)) order by a.ts, a.id",
            self.env,
            since,
            until,
            queues,
        )

    async def history(self, f: HistoryQuery, limit: int) -> list[Row]:
        """Reviews decided (or escalated away) in [since, until), newest first; `reviewer` matches
        any of the approvers of a four-eyes decision."""
        return await self.pool.fetch(
            _AGED + _HISTORY + " order by decided_at desc, id limit $7", self.env, *f, limit
        )

    async def history_count(self, f: HistoryQuery) -> int:
        return await self.pool.fetchval("select count(*) from hitl_reviews" + _HISTORY, self.env, *f)

    async def history_audit_rows(self, f: HistoryQuery) -> list[Row]:
        """Every audit row of the reviews `history` selects (without its limit), oldest first."""
        return await self.pool.fetch(
            _AUDIT_ROWS + " where a.review_id in (select id from hitl_reviews" + _HISTORY + ")"
            " order by a.ts, a.id",
            self.env,
            *f,
        )


def reviewer_wire(row: Row, token: str | None = None) -> Reviewer:
    return Reviewer(
        name=row["name"],
        queues=list(row["queues"]),
        created_at=row["created_at"].timestamp(),
        created_by=row["created_by"],
        revoked_at=epoch(row["revoked_at"]),
        token=token,
    )


def _closed_message(row: Row) -> str:
    rid, state = row["id"], row["state"]
    if state == ReviewState.ESCALATED:
        return f"review {rid} was escalated away (continued as review {row['escalated_to']}); nothing applied"
    if row["decision"] == "timeout":
        return f"review {rid} timed out and was {state} by the system; nothing applied"
    return f"review {rid} is already {state} (by {row['decided_by']}); nothing applied"

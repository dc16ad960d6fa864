"""sbctl ingress keys add|list|revoke: the API keys of the OpenAI-compatible HTTP ingress.

A key acts as one agent: its invocations carry that agent's identity, policy and budget, as if
the agent had sent them with the SDK. The key is shown once, when issued; the ingress keeps only
its hash. Issue and revocation are recorded with who and why, on the key and in the audit log
(event kind `lever`)."""

from __future__ import annotations

from datetime import UTC, datetime

from shared import names
from shared.contracts import IngressKeyAdd, IngressKeyList, IngressKeyRevoke, IngressKeysReply
from shared.sbctl.context import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    connect,
    from_options,
    operator,
    record_lever,
)
from shared.sbctl.output import emit_json, fail, table
from switchboard_sdk import errors, nats_auth


async def _ask(args, settings, op: str, body, *, lever: str | None = None) -> IngressKeysReply:
    who = operator(settings)
    bus = await connect(settings)
    try:
        try:
            reply = await bus.request(names.ingress(args.env, op), body, IngressKeysReply, timeout=10.0)
        except errors.SwitchboardError as exc:
            fail(
                f"the ingress did not answer: {exc.message}",
                code=exc.code,
                as_json=args.json,
                exit_code=EXIT_UNAVAILABLE,
            )
        if reply.error:
            fail(reply.error.message, code=reply.error.code, as_json=args.json, exit_code=EXIT_FAILED)
        if lever is not None:
            key = reply.keys[0]
            await record_lever(bus, who, lever, f"{key.agent}/{key.key_id}", args.reason)
    finally:
        await bus.drain(5)
    return reply


async def add(args, settings) -> int:
    if not nats_auth.AGENT_PATTERN.match(args.agent):
        fail(
            f"an agent name must match {nats_auth.AGENT_PATTERN.pattern}; got {args.agent!r}",
            code="invalid_request",
            as_json=args.json,
            exit_code=EXIT_USAGE,
        )
    body = from_options(IngressKeyAdd, agent=args.agent, by=operator(settings).name, reason=args.reason)
    key = (await _ask(args, settings, "keys.add", body, lever="ingress_key.add")).keys[0]
    if args.json:
        emit_json(key.model_dump(mode="json"))
    else:
        print(f"API key {key.key_id} for agent {key.agent} (shown once, stored hashed):")
        print(key.key)
    return 0


async def list_keys(args, settings) -> int:
    reply = await _ask(args, settings, "keys.list", IngressKeyList(include_revoked=args.all))
    if args.json:
        emit_json(reply.model_dump(mode="json"))
        return 0
    rows = [
        {
            "key_id": k.key_id,
            "agent": k.agent,
            "prefix": k.prefix,
            "created": _when(k.created_at),
            "by": k.created_by,
            "reason": k.reason,
            "revoked": _when(k.revoked_at),
        }
        for k in reply.keys
    ]
    print(table(rows, ["key_id", "agent", "prefix", "created", "by", "reason", "revoked"]))
    return 0


async def revoke(args, settings) -> int:
    body = IngressKeyRevoke(key_id=args.key_id, by=operator(settings).name, reason=args.reason)
    key = (await _ask(args, settings, "keys.revoke", body, lever="ingress_key.revoke")).keys[0]
    if args.json:
        emit_json(key.model_dump(mode="json"))
    else:
        print(f"revoked {key.key_id} (agent {key.agent}): it no longer works")
    return 0


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def add_parsers(sub, common) -> None:
    ingress = sub.add_parser("ingress", help="the OpenAI-compatible HTTP ingress").add_subparsers(
        dest="cmd", required=True
    )
    keys = ingress.add_parser("keys", help="API keys: each acts as one agent").add_subparsers(
        dest="what", required=True
    )
    p = keys.add_parser("add", help="issue a key for an agent; prints it once")
    p.add_argument("--agent", required=True, help="the agent the key acts as")
    p.add_argument("--reason", required=True, help="why (recorded with the key and in the audit)")
    common(p)
    p.set_defaults(func=add)
    p = keys.add_parser("list", help="keys (never the keys themselves): agent, who issued them, why")
    p.add_argument("--all", action="store_true", help="revoked keys too")
    common(p)
    p.set_defaults(func=list_keys)
    p = keys.add_parser("revoke", help="a key stops working (on every replica within seconds)")
    p.add_argument("key_id")
    p.add_argument("--reason", required=True, help="why (recorded with the key and in the audit)")
    common(p)
    p.set_defaults(func=revoke)

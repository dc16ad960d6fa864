"""Apply every service's SQL migrations: `python -m shared.migrate`.

Each service owns its tables and keeps plain `.sql` files in `services/<name>/migrations/`,
named `NNNN_what.sql`; sbctl, which writes the policy history of record, keeps its own in
`shared/sbctl/migrations/`. They are applied in order, each once, each in its own transaction,
under an advisory lock so that replicas starting together do not race.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg

from shared.settings import Settings

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"
SBCTL_DIR = Path(__file__).resolve().parent / "sbctl"
LOCK_ID = 0x5B_0001


def discover() -> list[tuple[str, Path]]:
    """(owner, file) for every migration, ordered by owner then file name."""
    found = []
    for folder in [*sorted(SERVICES_DIR.glob("*/migrations")), SBCTL_DIR / "migrations"]:
        for sql in sorted(folder.glob("*.sql")):
            found.append((folder.parent.name, sql))
    return found


async def apply(database_url: str, *, verbose: bool = True, options: dict | None = None) -> list[str]:
    conn = await asyncpg.connect(database_url, timeout=10, **(options or {}))
    applied = []
    try:
        await conn.execute("select pg_advisory_lock($1)", LOCK_ID)
        await conn.execute(
            """create table if not exists schema_migrations (
                   owner text not null,
                   name text not null,
                   applied_at timestamptz not null default now(),
                   primary key (owner, name))"""
        )
        done = {
            (r["owner"], r["name"]) for r in await conn.fetch("select owner, name from schema_migrations")
        }
        for owner, path in discover():
            if (owner, path.name) in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "insert into schema_migrations (owner, name) values ($1, $2)", owner, path.name
                )
            applied.append(f"{owner}/{path.name}")
            if verbose:
                print(f"migrate: applied {owner}/{path.name}")
    finally:
        await conn.close()
    if verbose and not applied:
        print("migrate: up to date")
    return applied


def main() -> None:
    try:
        settings = Settings()
        asyncio.run(apply(settings.database_url, options=settings.database_options()))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"migrate: failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()

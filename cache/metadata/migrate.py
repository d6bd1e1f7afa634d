"""PostgreSQL schema migrations: the versioned .sql files in migrations/, each applied once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import psycopg
from psycopg.rows import TupleRow

# pg_advisory_lock's key, scoped to the database by PostgreSQL itself: replicas starting
# together queue here, and each finds the work done by the first.
LOCK_KEY = 0x696D_6167_6573_7663  # b"imagesvc"

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with this package, in version order."""
    found: dict[int, Migration] = {}
    for entry in files("cache.metadata").joinpath("migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match[1])
        if version in found:
            raise RuntimeError(f"two migrations numbered {version:04d}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


async def migrate(conn: psycopg.AsyncConnection[TupleRow]) -> list[int]:
    """Apply the migrations conn's database lacks, each in its own transaction; return
    their versions. conn must be in autocommit mode (the lock outlives transactions)."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cursor.fetchall()}
        done: list[int] = []
        for migration in migrations():
            if migration.version in applied:
                continue
            async with conn.transaction():
                # No parameters: psycopg sends the file as one simple query, so it may
                # hold several statements.
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

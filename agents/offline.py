"""An agent's stored state, read without the agent: its channels from its store
(`agent.db` and the payment journal beside it) and the ledger's height.

`mesh status` and `mesh channels` show a stopped agent this way, and a running agent
looks up channel ids by prefix here (`stored_ids`: the channels only its store keeps,
released or settled ones). Both files are opened read-only (SQLite ``mode=ro``, a
short busy timeout). This module must never write the store, the journal or the
ledger: looking at a stopped agent must not change what it finds when it starts.
(docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mesh.chain.ledger_db import tip_block
from mesh.channel.settle import channel_summary
from mesh.channel.store import CHANNEL_SCHEMA, ids_with_prefix, load_channels
from mesh.errors import MeshError

BUSY_SECONDS = 2.0
"""How long a read waits for a writer's lock (a starting agent, a miner) before failing."""


class OfflineError(MeshError):
    """A stopped agent's store or the ledger cannot be read."""


@contextmanager
def read_only(path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the SQLite file at `path` (`what` names it in
    errors), in one read transaction: every query sees one snapshot."""
    if not path.is_file():
        raise OfflineError(f"{what}: {path} does not exist")
    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=BUSY_SECONDS,
            isolation_level=None,
        )
    except sqlite3.Error as exc:
        raise OfflineError(f"{what}: cannot open {path} read-only ({exc})") from None
    try:
        db.execute("BEGIN")
        yield db
    finally:
        db.close()  # (ends the read transaction; nothing was written)


def _channels_version(db: sqlite3.Connection) -> int:
    """The store's channel schema version (0: it never held a channel table)."""
    tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master")}
    if "channels" not in tables or "schema_versions" not in tables:
        return 0
    row = db.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (CHANNEL_SCHEMA.component,)
    ).fetchone()
    return int(row[0]) if row else 0


def _readable(db: sqlite3.Connection, database: Path) -> bool:
    """Whether the store holds channels this code can read (False: none at all)."""
    version = _channels_version(db)
    if version and version != CHANNEL_SCHEMA.version:
        newer = "a newer" if version > CHANNEL_SCHEMA.version else "an older"
        raise OfflineError(
            f"{database}: its channels were written by {newer} m2mesh (schema {version},"
            f" this one reads {CHANNEL_SCHEMA.version}); run the agent with this m2mesh"
            " once to upgrade it, or use the m2mesh that wrote it"
        )
    return bool(version)


def stored_ids(database: Path, prefix: str, limit: int) -> list[bytes]:
    """At most `limit` ids of the channels stored at `database` (in any state) whose
    hex starts with `prefix`; none when there is no store yet."""
    if not database.is_file():
        return []
    with read_only(database, "the agent's store") as db:
        if not _channels_version(db):
            return []
        return ids_with_prefix(db, prefix, limit)


def ledger_height(ledger: Path) -> int:
    """The height of the best block of the LocalLedger file at `ledger`."""
    with read_only(ledger, "the ledger") as db:
        tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master")}
        if "blocks" not in tables:
            raise OfflineError(f"{ledger} is not an m2mesh ledger")
        return tip_block(db).height


def stored_state(data_dir: Path, ledger: Path) -> dict[str, Any]:
    """What `mesh status` shows of the stopped agent of `data_dir`: every channel in
    its store, as `channel_summary` shows it at the height of `ledger` (None, with
    `ledger_error` saying why, when the ledger cannot be read), JSON-ready."""
    database = data_dir / "agent.db"
    with read_only(database, "the agent's store") as db:
        stored = load_channels(db, database, include_final=True) if _readable(db, database) else []
    height: int | None = None
    problem: str | None = None
    try:
        height = ledger_height(ledger)
    except (OfflineError, sqlite3.Error) as exc:
        problem = str(exc)
    return {
        "running": False,
        "store": str(database),
        "ledger": str(ledger),
        "height": height,
        "ledger_error": problem,
        "channels": [channel_summary(s.record, s.service, height) for s in stored],
    }


__all__ = ["OfflineError", "ledger_height", "read_only", "stored_ids", "stored_state"]

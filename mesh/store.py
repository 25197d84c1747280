"""The agent's SQLite store: one database file, WAL, busy timeout, versioned schemas.

This module owns how m2mesh opens SQLite and how each component's tables come into
being. A component (the wallet, the channel manager, the local ledger) describes its
tables as a `Schema`: a name and an ordered tuple of migrations, where version N means
"the first N migrations have run". `Store.register(schema)` applies whatever is missing,
inside one write transaction, and records the new version in ``schema_versions``; several
processes opening the same file at once apply each migration exactly once, because the
version is read and advanced under SQLite's write lock.

Pragmas, and why: ``journal_mode=WAL`` so readers never block the writer and a crash at
any point leaves the last committed state; ``busy_timeout`` so concurrent writers queue
instead of failing; ``foreign_keys=ON``; ``journal_size_limit`` so a WAL that grew
(a long reader held the checkpoint back) does not keep its size; ``temp_store=MEMORY``
so statement journals (every multi-row UPDATE writes one) never touch the disk;
``synchronous`` is FULL by default (a commit survives power loss, docs/ARCHITECTURE.md §7) and may
be NORMAL where losing the last commits on power loss is acceptable (the local test ledger).

It must never: know any component's tables, swallow an SQLite error, or let a caller
hold a write transaction open across anything but SQLite work.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mesh.errors import MeshError

Synchronous = Literal["FULL", "NORMAL"]
DEFAULT_BUSY_TIMEOUT = 30.0
WAL_LIMIT = 8 << 20
"""Bytes a WAL file is cut back to after a checkpoint (``journal_size_limit``): a
store's disk use is its data plus at most about this much (the automatic checkpoint
runs at 1 000 pages, ~4 MB)."""


class StoreError(MeshError):
    """The database cannot be used as asked (newer schema, broken migration, bad file)."""


@dataclass(frozen=True)
class Schema:
    """A component's tables as ordered migrations.

    `migrations[i]` is an SQL script (one or more statements) taking the component from
    version i to i + 1. Published migrations are never edited, only appended to.
    """

    component: str
    migrations: tuple[str, ...]

    @property
    def version(self) -> int:
        """The version this code expects: the number of migrations."""
        return len(self.migrations)


_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions ("
    " component TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL)"
)


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (triggers included).

    `sqlite3.Connection.executescript` would commit the surrounding transaction, so
    migrations run statement by statement inside our own.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise StoreError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return statements


class Store:
    """One SQLite connection with m2mesh's pragmas, schema registry and transactions.

    A `Store` is not shared between threads unless opened with
    ``check_same_thread=False``, and then the caller serialises its use.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: Synchronous = "FULL",
        check_same_thread: bool = True,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._busy_ms = int(busy_timeout * 1000)
        self._polling = False  # SQLite's busy handler is off (see `_begin_immediate`)
        self._write_depth = 0  # open `write` blocks: >1 are savepoints
        self._committed: list[Callable[[], None]] = []  # `after_commit` callbacks
        try:
            self._db = sqlite3.connect(
                path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=check_same_thread,
            )
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute(f"PRAGMA synchronous = {synchronous}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            self._db.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open as an SQLite database ({exc})") from None
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")

    # ---------------------------------------------------------------- lifecycle

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and empty it (best effort: False while a
        reader or writer elsewhere holds it). Bounds the files for retention."""
        busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return int(busy) == 0

    @contextmanager
    def foreign_keys_off(self) -> Iterator[None]:
        """Foreign keys unchecked on this connection for a while (no transaction may be
        open): for deletes that keep the references whole themselves, on a child key
        without an index, where SQLite would scan the child table per parent row."""
        self._db.execute("PRAGMA foreign_keys = OFF")
        try:
            yield
        finally:
            self._db.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        """Close the connection; uncommitted work is rolled back by SQLite."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- schemas

    def register(self, schema: Schema) -> int:
        """Bring `schema.component` up to `schema.version`; return the version.

        Pending migrations run in order inside one write transaction, so either all of
        them are applied or none is. A database written by newer code (a higher version
        than this code knows) is refused rather than guessed at.
        """
        with self.write() as db:
            db.execute(_VERSIONS_TABLE)
            row = db.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (schema.component,)
            ).fetchone()
            current = int(row[0]) if row else 0
            if current > schema.version:
                raise StoreError(
                    f"{self.path}: {schema.component} schema is version {current}, newer than "
                    f"this m2mesh understands ({schema.version}); upgrade m2mesh"
                )
            for number in range(current, schema.version):
                try:
                    for statement in split_statements(schema.migrations[number]):
                        db.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"{schema.component} migration {number + 1} failed: {exc}"
                    ) from exc
            db.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (schema.component, schema.version),
            )
        return schema.version

    def version(self, component: str) -> int:
        """The recorded schema version of `component` (0 when never registered)."""
        self._wait_when_busy()
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'"
        ).fetchone()
        if not exists:
            return 0
        row = self._db.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
        return int(row[0]) if row else 0

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE): the write lock is taken up front.

        Taking the lock at BEGIN means the reads inside see the state the writes will be
        applied to — no other writer can slip in between (the basis of first-seen
        double-spend rejection across processes). Commits on normal exit, rolls back on
        any exception, which propagates.

        Inside another `write` of this store it is a savepoint of that transaction: its
        changes commit (or roll back) with the outer one, and an exception undoes just
        them. Components compose their writes this way into one commit (one set of
        pages written, e.g. an anchor's funding and its batch rows).
        """
        if self._write_depth:
            yield from self._savepoint()
            return
        self._begin_immediate()
        self._write_depth = 1
        self._committed = []
        try:
            yield self._db
        except BaseException:
            self._write_depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._write_depth = 0
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT that failed (a full disk) may leave the transaction open: end it,
            # or every later write would fail too and the fault could never pass.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        done, self._committed = self._committed, []
        for fn in done:
            fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call `fn` once the write transaction open now has committed (never if it
        rolls back): in-memory state that must follow the stored one, e.g. forgetting
        rows a nested write stored, waits for the outermost commit."""
        if not self._write_depth:
            raise StoreError("after_commit needs an open write transaction")
        self._committed.append(fn)

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        name = f"nested{self._write_depth}"
        self._db.execute(f"SAVEPOINT {name}")
        self._write_depth += 1
        callbacks = len(self._committed)
        try:
            yield self._db
        except BaseException:
            del self._committed[callbacks:]  # what the undone part asked for is void
            self._write_depth -= 1
            self._db.execute(f"ROLLBACK TO {name}")
            self._db.execute(f"RELEASE {name}")
            raise
        self._write_depth -= 1
        self._db.execute(f"RELEASE {name}")

    def _begin_immediate(self) -> None:
        """Take the write lock, polling every 0.2-2 ms until the busy timeout.

        SQLite's own busy handler backs off to 100 ms sleeps, so under contention one
        process can starve another for hundreds of milliseconds; polling briefly keeps
        writers from several processes interleaved (and latency low). SQLite's handler
        is switched off while we poll and stays off across back-to-back writes (a write
        transaction holds the lock and never waits); `_wait_when_busy` switches it back
        on before anything else runs.
        """
        if not self._polling:
            self._db.execute("PRAGMA busy_timeout = 0")
            self._polling = True
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.0002
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"{self.path}: write lock still busy after {self._busy_timeout} s"
                    ) from exc
            else:
                return
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.5, 0.002)

    def _wait_when_busy(self) -> None:
        """Give statements outside a write transaction SQLite's busy timeout again."""
        if self._polling:
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            self._polling = False

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one consistent snapshot."""
        self._wait_when_busy()
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """Run one read-only statement outside any explicit transaction."""
        self._wait_when_busy()
        return [tuple(row) for row in self._db.execute(sql, params).fetchall()]

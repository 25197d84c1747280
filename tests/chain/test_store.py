"""The agent store: pragmas, ordered migrations applied once, refusal of newer schemas."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from mesh.store import Schema, Store, StoreError, split_statements

V1 = """
CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO things (name) VALUES ('first');
"""
V2 = """
ALTER TABLE things ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER things_named AFTER INSERT ON things BEGIN
    UPDATE things SET size = length(NEW.name) WHERE id = NEW.id;
END;
"""


def test_pragmas(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store, store.read() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_migrations_apply_in_order_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with Store(path) as store:
        assert store.version("things") == 0
        assert store.register(Schema("things", (V1,))) == 1
        assert store.register(Schema("things", (V1,))) == 1  # nothing pending
    with Store(path) as store:
        assert store.register(Schema("things", (V1, V2))) == 2
        with store.write() as db:
            db.execute("INSERT INTO things (name) VALUES ('second')")
        with store.read() as db:
            rows = db.execute("SELECT name, size FROM things ORDER BY id").fetchall()
        assert rows == [("first", 0), ("second", 6)]
        assert store.version("things") == 2
        assert store.version("other") == 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store:
        store.register(Schema("things", (V1, V2)))
        with pytest.raises(StoreError, match="newer"):
            store.register(Schema("things", (V1,)))


def test_failed_migration_rolls_back_everything(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store:
        broken = Schema("things", (V1, "CREATE TABLE more (x);\nSELECT * FROM missing;"))
        with pytest.raises(StoreError, match="migration 2"):
            store.register(broken)
        assert store.version("things") == 0
        with store.read() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "things" not in tables and "more" not in tables


def test_concurrent_openers_run_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    schema = Schema("things", (V1, V2))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_and_register() -> None:
        try:
            with Store(path) as store:
                barrier.wait()
                store.register(schema)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Store(path) as store, store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM things").fetchone()[0] == 1


def test_write_rolls_back_on_error_and_lock_times_out(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with Store(path) as store:
        store.register(Schema("things", (V1,)))
        with pytest.raises(RuntimeError), store.write() as db:
            db.execute("INSERT INTO things (name) VALUES ('lost')")
            raise RuntimeError("boom")
        assert store.query("SELECT COUNT(*) FROM things") == [(1,)]
        with store.write(), Store(path, busy_timeout=0.05) as other:
            with pytest.raises(StoreError, match="busy"), other.write():
                pass
            assert other.query("SELECT COUNT(*) FROM things") == [(1,)]  # readers still read


def test_reads_after_writes_get_the_busy_timeout_back(tmp_path: Path) -> None:
    """Writes poll for the lock with SQLite's busy handler off, and leave it off for
    the next write; anything else must find the handler back on (a read can meet a
    locked database in WAL mode too, e.g. while another connection recovers it)."""
    with Store(tmp_path / "a.db") as store:
        store.register(Schema("things", (V1,)))
        for name in ("a", "b"):
            with store.write() as db:
                assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 0
                db.execute("INSERT INTO things (name) VALUES (?)", (name,))
        with store.read() as db:
            assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
        with store.write():
            pass
        assert store.query("PRAGMA busy_timeout") == [(30_000,)]
        with store.write():
            pass
        assert store.version("things") == 1
        assert store.query("PRAGMA busy_timeout") == [(30_000,)]


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(path)


def test_split_statements() -> None:
    assert len(split_statements(V2)) == 2
    with pytest.raises(StoreError, match="incomplete"):
        split_statements("CREATE TABLE x (a)")
    assert sqlite3.complete_statement(split_statements(V1)[0])


def test_nested_writes_commit_together_and_fail_alone(tmp_path: Path) -> None:
    """A `write` inside a `write` is a savepoint: its rows commit with the outer
    transaction (one commit: another connection sees nothing before it), and an
    exception inside undoes only its own rows."""
    path = tmp_path / "a.db"
    with Store(path) as store, Store(path) as other:
        store.register(Schema("things", (V1,)))

        def names(s: Store) -> list[str]:
            return [str(r[0]) for r in s.query("SELECT name FROM things ORDER BY id")]

        with store.write() as db:
            db.execute("INSERT INTO things (name) VALUES ('outer')")
            with store.write() as inner:
                inner.execute("INSERT INTO things (name) VALUES ('kept')")
            with pytest.raises(ValueError), store.write() as inner:
                inner.execute("INSERT INTO things (name) VALUES ('undone')")
                raise ValueError("the inner part fails")
            assert names(other) == ["first"]  # nothing committed yet
        assert names(other) == ["first", "outer", "kept"]
        with pytest.raises(ValueError), store.write() as db:
            with store.write() as inner:
                inner.execute("INSERT INTO things (name) VALUES ('gone')")
            raise ValueError("the outer part fails")
        assert names(other) == ["first", "outer", "kept"]
        with store.write() as db:  # the store is usable again, at depth 0
            db.execute("INSERT INTO things (name) VALUES ('after')")
        assert names(other)[-1] == "after"

"""`mesh proof` and `mesh verify` as users run them: real subprocesses, real files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mesh.anchoring.cold import ARCHIVE_DIR, write_cold
from mesh.anchoring.hashchain import StreamWriter
from mesh.anchoring.kept import KeptRecords
from mesh.anchoring.store import AnchorStore
from mesh.store import Store
from tests.anchoring.conftest import Anchored
from tests.anchoring.helpers import BUYER, PRODUCER, flip, mesh, open_store
from tests.anchoring.test_cold import cold_batches, copy_data_dir, evict


def test_list_shows_streams_with_anchored_ranges(anchored: Anchored) -> None:
    result = mesh("proof", "--data-dir", anchored.data_dir, "--list")
    assert result.returncode == 0, result.stderr
    streams = {s["stream"]: s for s in json.loads(result.stdout)["streams"]}
    assert streams["vibration"]["anchored"] == [[0, 122]]
    assert streams["meter"]["anchored"] == [[0, 6]]
    for stream in streams.values():
        assert stream["agent"] == PRODUCER.peer_id and stream["origin"] == "own"
        assert stream["unanchored"] == 0


def test_export_then_verify_with_the_ledger_or_a_headers_file(
    anchored: Anchored, tmp_path: Path
) -> None:
    proof = tmp_path / "vib-42.json"
    result = mesh("proof", "--data-dir", anchored.data_dir, "--stream", "vibration", "--seq", "42",
                  "--out", proof)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(proof.read_text())["record"]["fields"]["seq"] == 42
    block = anchored.headers.at(1)
    assert block is not None
    headers = tmp_path / "headers.json"
    exported = mesh("proof", "--export-headers", headers, "--ledger", anchored.ledger)
    assert exported.returncode == 0, exported.stderr
    for source in (("--ledger", anchored.ledger), ("--headers", headers)):
        result = mesh("verify", proof, *source)
        assert result.returncode == 0, result.stdout + result.stderr
        first = result.stdout.splitlines()[0]
        when = datetime.fromtimestamp(block.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert first.startswith(f"VALID block 1 time {when} ")
        assert "stream vibration seq 42" in first
    # Proof on stdout; the default ledger comes from $M2MESH_LEDGER.
    printed = mesh("proof", "--data-dir", anchored.data_dir, "--stream", "meter", "--seq", "6")
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "meter.json").write_text(printed.stdout)
    result = mesh("verify", tmp_path / "meter.json", env={"M2MESH_LEDGER": str(anchored.ledger)})
    assert result.returncode == 0 and result.stdout.startswith("VALID block 2 "), result.stdout


def test_verify_names_the_failed_link(anchored: Anchored, tmp_path: Path) -> None:
    document = anchored.proofs[("vibration", 7)].to_document()
    document["record"]["signature"] = flip(document["record"]["signature"], 10, 0x01)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(document))
    result = mesh("verify", path, "--ledger", anchored.ledger)
    assert result.returncode == 1
    assert result.stdout.startswith("INVALID record-signature: ")
    document = anchored.proofs[("vibration", 7)].to_document()
    document["block"]["bump"] = flip(document["block"]["bump"], 40, 0x80)
    path.write_text(json.dumps(document))
    result = mesh("verify", path, "--headers", anchored.headers_file)
    assert result.returncode == 1 and result.stdout.startswith("INVALID block-proof: ")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"\x00\x01binary junk\xff", "not"),
        (b"this is not json", "not JSON"),
        ("truncated", "not JSON (truncated or damaged?"),
        (b'{"m2mesh_proof": 1, "record": 5}', "proof.record must be dict"),
    ],
)
def test_bad_proof_files_are_clear_errors(
    anchored: Anchored, tmp_path: Path, content: bytes | str | None, expected: str
) -> None:
    path = tmp_path / "proof.json"
    if content == "truncated":
        path.write_text(anchored.proofs[("meter", 1)].to_json()[:300])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = mesh("verify", path, "--ledger", anchored.ledger)
    assert result.returncode == 1
    assert result.stdout.startswith("INVALID format: ") and expected in result.stdout


def test_bad_header_sources_are_clear_errors(anchored: Anchored, tmp_path: Path) -> None:
    proof = tmp_path / "proof.json"
    proof.write_text(anchored.proofs[("meter", 1)].to_json())
    junk = tmp_path / "junk"
    junk.write_text("not a database, not json")
    for args, expected in [
        (("--headers", junk), "not JSON"),
        (("--headers", tmp_path / "missing.json"), "no such file"),
        (("--ledger", junk), "cannot open as an SQLite database"),
        (("--ledger", tmp_path / "missing.db"), "no ledger at"),
        (("--ledger", proof), "cannot open as an SQLite database"),
    ]:
        result = mesh("verify", proof, *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("mesh verify: error: ") and expected in result.stderr, (
            args,
            result.stderr,
        )
    result = mesh("verify", proof, env={"M2MESH_LEDGER": str(tmp_path / "none.db")})
    assert result.returncode == 1 and "give --ledger FILE or --headers FILE" in result.stderr


def test_proof_errors_are_clear(anchored: Anchored, tmp_path: Path) -> None:
    # A store holding one stream of two agents, nothing anchored yet.
    data = tmp_path / "buyer"
    with open_store(data) as store:
        records = AnchorStore(store)
        records.insert_own([StreamWriter(BUYER).append("vibration", b"mine", 1)])
        kept = KeptRecords(store)
        kept.keep(StreamWriter(PRODUCER).append("vibration", b"theirs", 1))
        records.log.close()  # as an agent does when it stops: the index is written
        kept.log.close()
    for args, expected in [
        (("--data-dir", data, "--stream", "vibration", "--seq", "0"), "pick --agent"),
        (
            ("--data-dir", data, "--stream", "vibration", "--seq", "0", "--agent", BUYER.peer_id),
            "not in a batch yet",
        ),
        (("--data-dir", data, "--stream", "vibration", "--seq", "0", "--agent", "zz"), "not hex"),
        (("--data-dir", data, "--stream", "other", "--seq", "0"), "no records of stream"),
        (("--data-dir", data, "--seq", "0"), "give --stream"),
        (("--data-dir", anchored.data_dir, "--stream", "meter", "--seq", "99"), "no record"),
        (("--data-dir", tmp_path / "nowhere", "--list"), "no agent store"),
        (("--list",), "--data-dir DIR is required"),
        (("--export-headers", tmp_path / "h.json", "--ledger", tmp_path / "x.db"), "no ledger"),
    ]:
        result = mesh("proof", *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("mesh proof: error: ") and expected in result.stderr, (
            args,
            result.stderr,
        )


# --------------------------------------------------------------------------- archives


def test_proof_falls_back_to_the_archive_files(anchored: Anchored, tmp_path: Path) -> None:
    data = copy_data_dir(anchored.data_dir, tmp_path / "agent")
    with open_store(data) as store:  # retention: block 1's batches move to DATA_DIR/archive
        moved = cold_batches(store, upto=1)
        write_cold(data / ARCHIVE_DIR, moved)
        evict(store, moved)
        assert [(b.stream, b.first_seq) for b in moved] == [("vibration", 0), ("vibration", 50)]
    listed = mesh("proof", "--data-dir", data, "--list")
    assert listed.returncode == 0, listed.stderr
    streams = {s["stream"]: s for s in json.loads(listed.stdout)["streams"]}
    assert streams["vibration"]["anchored"] == [[100, 122]]
    assert streams["vibration"]["archived"] == [[0, 99]]
    assert streams["vibration"]["records"] == 23 and streams["vibration"]["archived_records"] == 100
    assert streams["meter"]["anchored"] == [[0, 6]] and streams["meter"]["archived"] == []
    for seq in (42, 110):  # from the archive, then from the store
        proof = tmp_path / f"vib-{seq}.json"
        result = mesh("proof", "--data-dir", data, "--stream", "vibration", "--seq", str(seq),
                      "--out", proof)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(proof.read_text()) == anchored.proofs[("vibration", seq)].to_document()
        result = mesh("verify", proof, "--headers", anchored.headers_file)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"VALID block {1 if seq < 100 else 2} ")
    missing = mesh("proof", "--data-dir", data, "--stream", "vibration", "--seq", "123")
    assert missing.returncode == 1 and "no record vibration/123" in missing.stderr


@pytest.mark.parametrize("store", ["none", "no anchoring tables"])
def test_proof_from_an_archive_alone(anchored: Anchored, tmp_path: Path, store: str) -> None:
    data = tmp_path / "agent"
    with open_store(anchored.data_dir) as source:
        write_cold(data / ARCHIVE_DIR, cold_batches(source))
    if store == "no anchoring tables":
        Store(data / "agent.db").close()
    listed = mesh("proof", "--data-dir", data, "--list")
    assert listed.returncode == 0, listed.stderr
    assert [
        (s["stream"], s["anchored"], s["archived"]) for s in json.loads(listed.stdout)["streams"]
    ] == [
        ("meter", [], [[0, 6]]),
        ("vibration", [], [[0, 122]]),
    ]
    printed = mesh("proof", "--data-dir", data, "--stream", "meter", "--seq", "3")
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "meter.json").write_text(printed.stdout)
    result = mesh("verify", tmp_path / "meter.json", "--ledger", anchored.ledger)
    assert result.returncode == 0 and result.stdout.startswith("VALID block 2 "), result.stdout


def test_a_damaged_archive_file_is_one_clear_line(anchored: Anchored, tmp_path: Path) -> None:
    data = tmp_path / "agent"
    with open_store(anchored.data_dir) as source:
        vibration = write_cold(data / ARCHIVE_DIR, cold_batches(source, stream="vibration"))
        write_cold(data / ARCHIVE_DIR, cold_batches(source, stream="meter"))
    raw = bytearray(vibration.read_bytes())
    raw[-10] ^= 0x20
    vibration.write_bytes(bytes(raw))
    result = mesh("proof", "--data-dir", data, "--stream", "vibration", "--seq", "120")
    assert result.returncode == 1
    assert result.stderr == (
        f"mesh proof: error: {vibration}: damaged archive file (block 2 fails its checksum)\n"
    )
    # The other file, and the listing (the index), are still of use.
    assert mesh("proof", "--data-dir", data, "--stream", "meter", "--seq", "3").returncode == 0
    assert mesh("proof", "--data-dir", data, "--list").returncode == 0

"""Channel ids as the operator types them, and a stopped agent's channels.

Real `mesh run` agents on a real LocalLedger (a seller of a vibration feed and a buyer
with a small want, the seller a static peer of the buyer): `mesh status` shows 16 hex
digits of a channel id, and any unique prefix of at least 8 closes the channel; a
shorter or non-hex one is one line. A close the payee cannot answer says when the
refund comes instead. Once the agents are stopped, `mesh status` and `mesh channels`
read the buyer's store -- without writing it -- and show each channel's expiry
height and the blocks left to it. Ambiguity is tested on real store rows: two random
channel ids of real agents sharing 8 hex digits is a 1-in-4-billion event.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agents.commands import ChannelIdError, channel_prefix, resolve_channel
from agents.offline import stored_ids
from mesh.chain.ledger import LocalLedger
from mesh.channel.config import ChannelConfig
from mesh.channel.store import ChannelStore
from mesh.store import Store
from tests.channel.helpers import EXPIRY, make_pair
from tests.discovery.agents import FEED, RunningAgent, sessions
from tests.reliability.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
SMALL_WANT = """
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.05
max_price = 2
units = 5
budget = 1000
prepay = 2
"""


def mesh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", *map(str, args)],
        capture_output=True, text=True, timeout=90, check=False, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed `mesh` command, which must be exactly one line."""
    assert result.returncode == 1 and not result.stdout, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    return line


def start_pair(tmp_path: Path, ledger: Path) -> tuple[RunningAgent, RunningAgent]:
    """A seller and a buyer whose small want pays it through one channel, both up."""
    port = free_port()
    site = f"ids-{os.getpid()}-{tmp_path.name}"  # away from any other test's agents
    seller = RunningAgent(tmp_path, ledger, "seller", "127.0.0.1", f"tcp://127.0.0.1:{port}",
                          FEED, site=site)  # fmt: skip
    buyer = RunningAgent(tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0",
                         SMALL_WANT, funds=100_000, site=site,
                         static_peers=[f"{seller.peer_id}@tcp://127.0.0.1:{port}"])  # fmt: skip
    return seller, buyer


def open_payer_channel(buyer: RunningAgent) -> dict[str, Any]:
    """The buyer's channel once its want is done (the channel stays open)."""

    def done(status: dict[str, Any]) -> bool:
        return status["wants"][0]["state"] == "done" and bool(payer_channels(status))

    buyer.wait(done, 60, "the want done")
    status = buyer.status()
    assert status is not None
    [channel] = payer_channels(status)
    assert channel["state"] == "open", channel
    return channel


def payer_channels(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in status["channels"] if c["role"] == "payer"]


def height(ledger: Path) -> int:
    with LocalLedger.open(ledger) as chain:
        return chain.height()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_unique_prefix_of_8_hex_digits_names_a_channel_and_a_stopped_agent_shows_it(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    seller, buyer = start_pair(tmp_path, ledger)
    try:
        channel = open_payer_channel(buyer)
        cid = channel["channel_id"]
        data = ("--data-dir", buyer.data)
        # `mesh status` shows 16 digits, and under the channel what its expiry means.
        shown = mesh("status", *data)
        assert shown.returncode == 0 and f"  {cid[:16]} payer" in shown.stdout, shown.stdout
        left = channel["expiry_height"] - height(ledger)
        assert f"expiry {channel['expiry_height']} ({left} blocks left)" in shown.stdout
        # The provider's view: what it sells and, per meter, to whom and what.
        sold = mesh("status", "--data-dir", seller.data).stdout
        service = channel["service"]
        assert f"  sells {service} (" in sold, sold
        meter = f"  meter {cid[:16]} {service} to {buyer.peer_id[:16]}: "
        assert any(line.startswith(meter) for line in sold.splitlines()), sold

        short = one_line_error(mesh("channels", "close", cid[:7], *data))
        assert short == (
            f"mesh channels: error: channel id {cid[:7]} is too short (7 hex digits):"
            " give at least 8 (a unique prefix of the id, as `mesh channels` lists them)"
        )
        not_hex = one_line_error(mesh("channels", "close", "82dca67x1", *data))
        assert "channel id '82dca67x1' is not hex" in not_hex, not_hex
        other = "0" * 8 if not cid.startswith("0" * 8) else "f" * 8
        unknown = one_line_error(mesh("channels", "close", other, *data))
        said = f"no channel {other}: no channel id of this agent starts with it"
        assert unknown == f"mesh channels: error: {said}"

        closed = mesh("channels", "close", cid[:8].upper(), *data)
        assert closed.returncode == 0, closed.stderr
        reply = json.loads(closed.stdout)
        assert (reply["channel_id"], reply["state"]) == (cid, "closed"), reply
        assert reply["close_txid"] and reply["total"] == channel["total"] > 0
    finally:
        buyer.stop()
        seller.stop()
    assert not buyer.log_lines("Traceback") and not seller.log_lines("Traceback")

    store = buyer.data / "agent.db"
    before = digest(store)
    status = mesh("status", "--data-dir", buyer.data, "--ledger", ledger)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == (
        f"the agent of {buyer.data} is not running: this is its stored state ({store}, read-only)"
    )
    now = height(ledger)
    assert f"ledger {ledger}: height {now}" in lines
    expiry = channel["expiry_height"]
    [row] = [i for i, line in enumerate(lines) if line.startswith(f"  {cid[:16]} payer vibration")]
    assert "closed: chain paid" in lines[row], lines[row]
    assert lines[row + 1].strip() == (
        f"expiry {expiry} ({expiry - now} blocks left): settled, nothing happens then"
    )

    listed = mesh("channels", "--data-dir", buyer.data, "--ledger", ledger)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].endswith("is not running: this is its stored state"
                                                  f" ({store}, read-only)")  # fmt: skip
    assert f"  {cid} payer vibration" in listed.stdout
    as_json = mesh("channels", "--json", "--data-dir", buyer.data, "--ledger", ledger)
    assert as_json.returncode == 0 and "is not running" in as_json.stderr.splitlines()[0]
    [stored] = [c for c in json.loads(as_json.stdout) if c["channel_id"] == cid]
    assert (stored["state"], stored["expiry_height"], stored["blocks_to_expiry"]) == (
        "closed",
        expiry,
        expiry - now,
    )
    assert digest(store) == before, "reading a stopped agent's store wrote it"


def test_a_close_the_payee_cannot_answer_says_when_the_refund_comes(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    seller, buyer = start_pair(tmp_path, ledger)
    try:
        channel = open_payer_channel(buyer)
        cid, expiry = channel["channel_id"], channel["expiry_height"]
        seller.proc.kill()  # kill -9: the payee is gone, the channel still open
        seller.proc.wait()
        buyer.wait(lambda s: seller.peer_id not in sessions(s), 15, "the session to end")
        failed = one_line_error(mesh("channels", "close", cid[:12], "--data-dir", buyer.data))
        now = height(ledger)
        refund = channel["capacity"] - ChannelConfig().refund_fee
        assert failed == (
            f"mesh channels: error: channel {cid[:16]} not closed in time: the payee"
            f" {seller.peer_id[:16]} is not connected. It stays closing: the close is asked"
            " again when the payee is back, and the payee can still close with the latest"
            f" payment ({channel['total']} sat); otherwise the refund of {refund}"
            f" sat (the capacity less its fee) becomes valid at height {expiry}"
            f" ({expiry - now} blocks from now) and this agent broadcasts it then"
        ), failed
    finally:
        buyer.stop()
        seller.stop()
    assert not buyer.log_lines("Traceback")

    status = mesh("status", "--data-dir", buyer.data, "--ledger", ledger)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"the agent of {buyer.data} is not running")
    [row] = [i for i, line in enumerate(lines) if line.startswith(f"  {cid[:16]} payer")]
    now = height(ledger)
    assert f"closing: locked until height {expiry} ({expiry - now} blocks)" in lines[row]
    assert lines[row + 1].strip() == (
        f"expiry {expiry} ({expiry - now} blocks left): the refund of the whole capacity"
        f" ({channel['capacity']} sat, less its fee) becomes valid then and this agent"
        f" broadcasts it, unless the payee has closed with the latest payment"
        f" ({channel['total']} sat) first"
    )
    # Without a ledger to read, the channels are still shown: the height is unknown.
    blind = mesh("status", "--data-dir", buyer.data, "--ledger", tmp_path / "nowhere.db")
    assert blind.returncode == 0, blind.stderr
    assert blind.stdout.splitlines()[1].startswith("ledger: height unknown (the ledger: ")
    assert f"expiry {expiry} (height unknown)" in blind.stdout


def test_an_ambiguous_or_bad_prefix_is_one_line_naming_the_matches(tmp_path: Path) -> None:
    """Real store rows whose ids share a 10-digit prefix, read as a running agent reads
    its settled channels (`stored_ids`) and as `mesh status` reads a stopped one."""
    database = tmp_path / "agent.db"
    shared = bytes.fromhex("82dca671ca")
    ids = [shared + b"\x11" * 27, shared + b"\x22" * 27, bytes.fromhex("82dca671cb") + bytes(27)]
    with Store(database) as store:
        channels = ChannelStore(store)
        for cid in ids:
            payer, _, _, _ = make_pair()
            record = payer.record()
            channels.save([(replace(record, terms=replace(record.terms, channel_id=cid)), "svc")])
        channels.close()
    a, b, c = (cid.hex() for cid in ids)

    def resolve(text: str) -> str:
        prefix = channel_prefix(text)
        return resolve_channel(prefix, stored_ids(database, prefix, 6)).hex()

    assert resolve("82dca671cb") == c and resolve(a[:11]) == a and resolve(b.upper()) == b
    with pytest.raises(ChannelIdError) as ambiguous:
        resolve("82dca671c")  # (an odd number of digits: half a byte)
    assert str(ambiguous.value) == (
        f"channel id prefix 82dca671c is ambiguous: it matches {a}, {b}, {c}; give more digits"
    )
    with pytest.raises(ChannelIdError, match=f"ambiguous: it matches {a}, {b}; give"):
        resolve("82dca671ca")
    with pytest.raises(ChannelIdError, match=r"^no channel 82dca671cc: "):
        resolve("82dca671cc")
    with pytest.raises(ChannelIdError, match=r"^channel id 82dca67 is too short \(7 hex"):
        channel_prefix("82dca67")
    with pytest.raises(ChannelIdError, match="is not hex"):
        channel_prefix("82dca671-a")
    assert stored_ids(tmp_path / "none.db", "82dca671", 6) == []  # no store yet: none

    # The same store as a stopped agent's: all three, by 16 digits, read-only.
    before = digest(database)
    status = mesh("status", "--data-dir", tmp_path, "--ledger", tmp_path / "nowhere.db")
    assert status.returncode == 0, status.stderr
    for hex_id in (a, b, c):
        assert f"  {hex_id[:16]} payer svc" in status.stdout
    assert f"expiry {EXPIRY} (height unknown)" in status.stdout
    assert digest(database) == before
    # No store at all: still one line, exit 1.
    empty = one_line_error(mesh("status", "--data-dir", tmp_path / "empty"))
    assert "no agent is running with this data dir" in empty and "agent.db does not exist" in empty

"""`mesh cert` as a certifier, a subject and a verifier run it: the real CLI against a
real LocalLedger file and real agent data dirs; plus the pure parts it stands on
(`mesh.certs.conditions`, `mesh.certs.revocation`)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from bsv.keys import PrivateKey

from agents.cli import main
from mesh.certs import issue, type_id
from mesh.certs.conditions import Condition, ConditionError, parse_condition
from mesh.certs.revocation import (
    Revocation,
    RevocationError,
    judge,
    revocation_key,
    revocation_label,
    revocation_script,
    revocation_spend,
)
from mesh.chain.base import OutputState
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import Outpoint, p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.identity import Identity, load_identity
from mesh.store import Store

CALIBRATION = {"calibrated_until": "2999-12-31", "accuracy": "0.1", "owner": "ACME Metrology"}


@dataclass
class Site:
    """A ledger, a calibration lab with a funded agent wallet, a sensor and two buyers."""

    root: Path
    ledger: Path
    lab_dir: Path
    keys: dict[str, Path]
    ids: dict[str, str]

    def key(self, who: str) -> str:
        return str(self.keys[who])


def mesh(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run `mesh ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


def one_line_error(result: tuple[int, str, str], needle: str) -> None:
    code, out, err = result
    assert code == 1, (out, err)
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def invalid(result: tuple[int, str, str], code_word: str) -> str:
    code, out, err = result
    assert code == 1, (out, err)
    assert out.startswith(f"INVALID {code_word}: "), out
    assert len(out.strip().splitlines()) == 1
    return out


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    ledger = tmp_path / "ledger.db"
    ok(mesh(capsys, "ledger", "init", "--db", ledger))
    lab_dir = tmp_path / "lab"
    keys = {
        "lab": lab_dir / "identity.key",
        "sensor": tmp_path / "sensor.key",
        "buyer": tmp_path / "buyer.key",
        "other": tmp_path / "other.key",
    }
    ids = {who: ok(mesh(capsys, "keygen", "--out", path)).strip() for who, path in keys.items()}
    address = ok(mesh(capsys, "address", "--data-dir", lab_dir)).strip()
    ok(mesh(capsys, "ledger", "fund", "--db", ledger, address, "100000", "--mine"))
    return Site(tmp_path, ledger, lab_dir, keys, ids)


def issue_cert(
    capsys: pytest.CaptureFixture[str],
    site: Site,
    out: Path,
    values: dict[str, str] = CALIBRATION,
    *extra: str | Path,
) -> tuple[str, str]:
    """`mesh cert issue` by the lab for the sensor: (serial printed, stderr)."""
    fields = [a for name, value in values.items() for a in ("--field", f"{name}={value}")]
    code, serial, err = mesh(
        capsys, "cert", "issue", "--key", site.key("lab"), "--subject", site.ids["sensor"],
        "--type", "m2mesh.calibration", *fields, "--out", out, *extra,
    )  # fmt: skip
    assert code == 0, err
    return serial.strip(), err


def reveal(capsys: pytest.CaptureFixture[str], site: Site, cert: Path, *names: str) -> Path:
    out = cert.with_name(f"{cert.stem}-for-buyer.json")
    fields = [a for name in names for a in ("--field", name)]
    ok(mesh(capsys, "cert", "reveal", cert, "--key", site.key("sensor"),
            "--to", site.ids["buyer"], *fields, "--out", out))  # fmt: skip
    return out


# ---------------------------------------------------------------- issue, show, reveal, verify


def test_issue_show_reveal_and_verify_one_field(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = site.root / "sensor-calibration.json"
    serial, err = issue_cert(capsys, site, cert)
    assert "not revocable" in err and str(cert) in err
    document = json.loads(cert.read_text())
    assert document["serialNumber"] == serial
    assert document["type"] == type_id("m2mesh.calibration")
    assert set(document["masterKeyring"]) == set(CALIBRATION)
    assert cert.stat().st_mode & 0o777 == 0o600

    shown = ok(mesh(capsys, "cert", "show", cert))
    assert "m2mesh.calibration" in shown and "not revocable" in shown and "valid" in shown
    assert "accuracy, calibrated_until, owner" in shown
    assert "2999-12-31" not in shown  # no key: names, never values
    as_subject = ok(mesh(capsys, "cert", "show", cert, "--key", site.key("sensor")))
    assert all(value in as_subject for value in CALIBRATION.values())
    as_json = json.loads(
        ok(mesh(capsys, "cert", "show", cert, "--key", site.key("sensor"), "--json"))
    )
    assert as_json["values"] == CALIBRATION and as_json["revocable"] is False
    assert as_json["certifier"] == site.ids["lab"] and as_json["subject"] == site.ids["sensor"]

    revealed = reveal(capsys, site, cert, "calibrated_until")
    sent = json.loads(revealed.read_text())
    assert "masterKeyring" not in sent and set(sent["keyring"]) == {"calibrated_until"}

    out = ok(mesh(capsys, "cert", "verify", revealed, "--key", site.key("buyer"),
                  "--certifier", site.ids["lab"]))  # fmt: skip
    assert out.startswith("VALID m2mesh.calibration certificate of " + site.ids["sensor"])
    assert "calibrated_until = 2999-12-31" in out and "one you trust" in out
    assert "0.1" not in out and "ACME" not in out  # what was not revealed stays hidden
    as_buyer = ok(mesh(capsys, "cert", "show", revealed, "--key", site.key("buyer")))
    assert "2999-12-31" in as_buyer and "ACME" not in as_buyer
    untrusted = ok(mesh(capsys, "cert", "verify", revealed))
    assert "NOT CHECKED" in untrusted  # no --certifier: the output says what was not proved


def test_another_verifier_cannot_open_and_a_stranger_certifier_is_refused(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = site.root / "cert.json"
    issue_cert(capsys, site, cert)
    revealed = reveal(capsys, site, cert, "calibrated_until")
    invalid(mesh(capsys, "cert", "verify", revealed, "--key", site.key("other")), "keyring")
    out = invalid(
        mesh(capsys, "cert", "verify", revealed, "--certifier", site.ids["other"]), "certifier"
    )
    assert site.ids["lab"] in out


def test_require_compares_dates_with_today(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    fresh, stale = site.root / "fresh.json", site.root / "stale.json"
    issue_cert(capsys, site, fresh)
    issue_cert(capsys, site, stale, {**CALIBRATION, "calibrated_until": "2000-01-01"})
    for cert in (fresh, stale):
        reveal(capsys, site, cert, "calibrated_until", "accuracy")
    verify = ("cert", "verify", "--key", site.key("buyer"),
              "--require", "calibrated_until>=today", "--require", "accuracy <= 0.5")  # fmt: skip
    out = ok(mesh(capsys, *verify, site.root / "fresh-for-buyer.json"))
    assert "require     calibrated_until >= today: holds" in out
    assert "accuracy <= 0.5: holds" in out
    out = invalid(mesh(capsys, *verify, site.root / "stale-for-buyer.json"), "expired")
    assert "calibrated_until is 2000-01-01, not >= today" in out
    # a field that was not revealed fails the condition too
    unrevealed = ("--key", site.key("buyer"), "--require", "owner == ACME Metrology")
    out = invalid(mesh(capsys, "cert", "verify", site.root / "fresh-for-buyer.json", *unrevealed),
                  "condition")  # fmt: skip
    assert "not among the fields revealed" in out


def test_revoke_then_verify_says_revoked(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    cert = site.root / "cert.json"
    revocable = ("--revocable", "--data-dir", site.lab_dir, "--ledger", site.ledger)
    serial, err = issue_cert(capsys, site, cert, CALIBRATION, *revocable)
    assert "not revocable" not in err
    outpoint = json.loads(cert.read_text())["revocationOutpoint"]
    txid, vout = outpoint.split(".")
    lab = load_identity(site.keys["lab"])
    with LocalLedger.open(site.ledger) as ledger:
        output = ledger.output(txid, int(vout))
    assert output.state is OutputState.UNSPENT and output.satoshis == 1000
    assert output.script == revocation_script(lab.key, serial)
    with Store(site.lab_dir / "agent.db") as store:  # paid by the wallet, not one of its coins
        wallet = Wallet(store, lab)
        assert all(c.txid != txid or c.vout != int(vout) for c in wallet.coins())
        assert wallet.coins("spent") and wallet.reservations() == set()

    revealed = reveal(capsys, site, cert, "calibrated_until")
    out = ok(mesh(capsys, "cert", "verify", revealed, "--ledger", site.ledger))
    assert f"not revoked: {outpoint} is unspent" in out

    revoke = ("cert", "revoke", cert, "--key", site.key("lab"),
              "--data-dir", site.lab_dir, "--ledger", site.ledger)  # fmt: skip
    spend = ok(mesh(capsys, *revoke)).strip()
    for file in (cert, revealed):
        out = invalid(mesh(capsys, "cert", "verify", file, "--ledger", site.ledger), "revoked")
        assert spend in out
    one_line_error(mesh(capsys, *revoke), "already revoked")
    with Store(site.lab_dir / "agent.db") as store:  # the coins went back to the wallet
        assert any(c.txid == spend for c in Wallet(store, lab).coins())

    other_ledger = site.root / "other-ledger.db"
    ok(mesh(capsys, "ledger", "init", "--db", other_ledger))
    one_line_error(
        mesh(capsys, "cert", "verify", cert, "--ledger", other_ledger),
        f"revocation outpoint {outpoint} not on this chain",
    )


def test_revoke_refuses_what_it_cannot_revoke(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, revocable = site.root / "plain.json", site.root / "revocable.json"
    issue_cert(capsys, site, plain)
    base = ("--data-dir", site.lab_dir, "--ledger", site.ledger)
    issue_cert(capsys, site, revocable, CALIBRATION, "--revocable", *base)
    one_line_error(
        mesh(capsys, "cert", "revoke", plain, "--key", site.key("lab"), *base), "not revocable"
    )
    one_line_error(
        mesh(capsys, "cert", "revoke", revocable, "--key", site.key("other"), *base),
        "not this certificate's certifier",
    )


def test_a_revocable_issue_needs_an_idle_wallet_that_can_pay(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = site.root / "cert.json"

    def by(who: str, data_dir: Path) -> tuple[str | Path, ...]:
        return ("cert", "issue", "--key", site.key(who), "--subject", site.ids["sensor"],
                "--type", "m2mesh.vendor", "--field", "model=X200", "--out", cert,
                "--revocable", "--ledger", site.ledger, "--data-dir", data_dir)  # fmt: skip

    fd = os.open(site.lab_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running agent holds it
        os.write(fd, b"4242\n")
        one_line_error(mesh(capsys, *by("lab", site.lab_dir)), "(pid 4242) is running")
    finally:
        os.close(fd)

    poor = site.root / "poor"  # another certifier's agent wallet, never funded
    ok(mesh(capsys, "address", "--data-dir", poor, "--key", site.key("other")))
    one_line_error(mesh(capsys, *by("other", poor)), "cannot pay the revocation output")
    one_line_error(mesh(capsys, *by("lab", poor)), "is not the wallet of --key")
    one_line_error(mesh(capsys, *by("lab", site.root / "nowhere")), "not a directory")
    assert not cert.exists()
    ok(mesh(capsys, *by("lab", site.lab_dir)))  # the lock is gone: now it pays


def test_a_tampered_certificate_is_invalid(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    cert = site.root / "cert.json"
    issue_cert(capsys, site, cert)
    document = json.loads(cert.read_text())
    sealed = bytearray(base64.b64decode(document["fields"]["accuracy"]))
    sealed[40] ^= 1
    document["fields"]["accuracy"] = base64.b64encode(sealed).decode()
    tampered = site.root / "tampered.json"
    tampered.write_text(json.dumps(document))
    invalid(mesh(capsys, "cert", "verify", tampered), "signature")
    assert "signature   INVALID" in ok(mesh(capsys, "cert", "show", tampered))
    reveal_ = ("--to", site.ids["buyer"], "--field", "owner", "--out", site.root / "x.json")
    one_line_error(
        mesh(capsys, "cert", "reveal", tampered, "--key", site.key("sensor"), *reveal_), "signature"
    )


def test_bad_inputs_are_one_line(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    cert = site.root / "cert.json"
    issue_cert(capsys, site, cert)
    not_json = site.root / "not.json"
    not_json.write_text("{nope")
    not_cert = site.root / "not-cert.json"
    not_cert.write_text(json.dumps({"type": "x"}))
    issue = ("cert", "issue", "--key", site.key("lab"), "--type", "m2mesh.vendor")
    sensor = site.ids["sensor"]
    reveal_ = ("cert", "reveal", cert, "--to", site.ids["buyer"], "--out", site.root / "r.json")
    out = site.root / "y"
    cases: list[tuple[tuple[str | Path, ...], str]] = [
        (("cert", "show", site.root / "missing.json"), "no such file"),
        (("cert", "show", not_json), "not JSON"),
        (("cert", "show", not_cert), "format"),
        (("cert", "verify", site.root / "missing.json"), "no such file"),
        (("cert", "show", cert, "--key", site.root / "missing.key"), "no such key file"),
        ((*issue, "--subject", sensor, "--field", "model", "--out", cert), "NAME=VALUE"),
        ((*issue, "--subject", sensor, "--field", "a=1", "--field", "a=2", "--out", out),
         "given twice"),
        ((*issue, "--subject", "zz", "--field", "model=x", "--out", out), "--subject"),
        ((*issue, "--subject", sensor, "--field", "model=x", "--out", cert), "already exists"),
        ((*issue, "--subject", sensor, "--field", "model=x", "--out", out,
          "--data-dir", site.lab_dir), "go with --revocable"),
        ((*reveal_, "--key", site.key("sensor"), "--field", "firmware"), "no such field"),
        ((*reveal_, "--key", site.key("buyer"), "--field", "owner"),
         "not this certificate's subject"),
        (("cert", "verify", cert, "--key", site.key("buyer"), "--require", "owner ~ x"),
         "not a condition"),
        (("cert", "verify", cert, "--require", "owner == x"), "--require needs --key"),
        (("cert", "verify", cert, "--certifier", "nothex"), "--certifier"),
    ]  # fmt: skip
    for args, needle in cases:
        one_line_error(mesh(capsys, *args), needle)
    invalid(mesh(capsys, "cert", "verify", not_json), "format")
    invalid(mesh(capsys, "cert", "verify", not_cert), "format")
    assert not out.exists() and not (site.root / "r.json").exists()


def test_the_real_command_says_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "cert", "verify", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"mesh cert: error: {tmp_path / 'missing.json'}: no such file"


# ---------------------------------------------------------------- conditions


TODAY = date(2026, 12, 6)


@pytest.mark.parametrize(
    ("text", "values", "fails"),
    [
        ("calibrated_until >= today", {"calibrated_until": "2026-12-06"}, None),
        ("calibrated_until>=today", {"calibrated_until": "2026-12-05"}, "not >= today"),
        ("calibrated_until <= 2027-01-01", {"calibrated_until": "2026-12-31"}, None),
        ("calibrated_until >= today", {"calibrated_until": "soon"}, "not a date"),
        ("accuracy <= 0.5", {"accuracy": "0.25"}, None),
        ("accuracy <= 0.5", {"accuracy": "10"}, "not <= 0.5"),  # as numbers, not as text
        ("accuracy == 1", {"accuracy": "1.00"}, None),
        ("accuracy >= 1", {"accuracy": "high"}, "not a number"),
        ("model == X200", {"model": "X200"}, None),
        ("model != X200", {"model": "X200"}, "not != 'X200'"),
        ("owner == ACME Metrology", {"owner": "ACME Metrology"}, None),
        ('word == "today"', {"word": "today"}, None),  # quoted: the word, not the date
        ("firmware >= 1.2", {}, "not among the fields revealed"),
    ],
)
def test_conditions_compare_as_their_literal_says(
    text: str, values: dict[str, str], fails: str | None
) -> None:
    reason = parse_condition(text).check(values, TODAY)
    if fails is None:
        assert reason is None
    else:
        assert reason is not None and fails in reason


@pytest.mark.parametrize(
    "text", ["", "owner", "a > 1", "a =< 1", "a ==", ">= 3", "a b == 1", "d <= 2026-13-45"]
)
def test_a_malformed_condition_is_refused(text: str) -> None:
    with pytest.raises(ConditionError):
        parse_condition(text)


def test_a_condition_reads_back_as_written() -> None:
    assert parse_condition(" calibrated_until>=today ") == Condition(
        "calibrated_until", ">=", "today", today=True
    )
    assert str(parse_condition("calibrated_until>=today")) == "calibrated_until >= today"
    assert str(parse_condition('w == "today"')) == 'w == "today"'
    with pytest.raises(ConditionError):
        Condition("a", ">", "1")


# ---------------------------------------------------------------- revocation helpers


def test_the_revocation_key_is_the_wallets_labelled_key_never_adopted(tmp_path: Path) -> None:
    lab = Identity.generate()
    serial = issue(lab.key, PrivateKey().public_key(), type_id("t"), {"a": "1"}).certificate
    label = revocation_label(serial.serial_number)
    assert label == "cert-revocation-" + base64.b64decode(serial.serial_number).hex()
    with Store(tmp_path / "agent.db") as store:
        wallet = Wallet(store, lab)
        key = revocation_key(lab.key, serial.serial_number)
        assert key.address() == wallet.payout_address(label)
        assert wallet.addresses() == []  # derived, not adopted: the wallet never spends it


def test_judge_and_a_spend_of_an_output_not_locked_to_the_key() -> None:
    key, other = PrivateKey(), PrivateKey()
    cert = issue(
        key, other.public_key(), type_id("t"), {"a": "1"}, revocation_outpoint="ab" * 32 + ".0"
    ).certificate
    assert judge(cert, OutputState.UNSPENT) is Revocation.GOOD
    assert judge(cert, OutputState.SPENT) is Revocation.REVOKED
    assert judge(cert, OutputState.UNKNOWN) is Revocation.UNKNOWN
    unrevocable = issue(key, other.public_key(), type_id("t"), {"a": "1"}).certificate
    assert judge(unrevocable, None) is Revocation.NOT_REVOCABLE
    outpoint = Outpoint("ab" * 32, 0)
    pay_to = p2pkh_script(PrivateKey().address())
    ours = Prevout(1000, p2pkh_script(key.address()))
    assert revocation_spend(key, outpoint, ours, pay_to, Policy())
    with pytest.raises(RevocationError, match="not locked"):
        revocation_spend(
            key, outpoint, Prevout(1000, p2pkh_script(other.address())), pay_to, Policy()
        )
    with pytest.raises(RevocationError, match="not enough for the fee"):
        revocation_spend(key, outpoint, Prevout(1, ours.locking_script), pay_to, Policy())


def test_a_vendor_certifies_serial_and_firmware_and_the_machine_reveals_one(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = site.root / "vendor.json"
    values = {"model": "VX-200", "serial": "SN-7781", "firmware": "4.2.1", "buildDate": "2026-01"}
    fields = [a for name, value in values.items() for a in ("--field", f"{name}={value}")]
    ok(mesh(capsys, "cert", "issue", "--key", site.key("lab"), "--subject", site.ids["sensor"],
            "--type", "m2mesh.vendor", *fields, "--out", cert))  # fmt: skip
    shown = ok(mesh(capsys, "cert", "show", cert))
    assert "m2mesh.vendor" in shown and "buildDate, firmware, model, serial" in shown
    assert "SN-7781" not in shown
    as_subject = json.loads(
        ok(mesh(capsys, "cert", "show", cert, "--key", site.key("sensor"), "--json"))
    )
    assert as_subject["values"] == values
    revealed = reveal(capsys, site, cert, "firmware")
    out = ok(mesh(capsys, "cert", "verify", revealed, "--key", site.key("buyer"),
                  "--certifier", site.ids["lab"], "--require", "firmware == 4.2.1"))  # fmt: skip
    assert out.startswith("VALID m2mesh.vendor certificate of " + site.ids["sensor"])
    assert "firmware = 4.2.1" in out and "firmware == 4.2.1: holds" in out
    assert "SN-7781" not in out and "VX-200" not in out  # the serial and model stay hidden
    out = invalid(mesh(capsys, "cert", "verify", revealed, "--key", site.key("buyer"),
                       "--require", "firmware == 5.0.0"), "condition")  # fmt: skip
    assert "firmware is '4.2.1'" in out  # (a version is text: == and != only)
    invalid(mesh(capsys, "cert", "verify", revealed, "--key", site.key("buyer"),
                 "--require", "serial == SN-7781"), "condition")  # fmt: skip


def test_revocation_is_refused_when_the_agents_run_on_the_bsv_network(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    revocable = site.root / "revocable.json"
    base = ("--data-dir", site.lab_dir, "--ledger", site.ledger)
    issue_cert(capsys, site, revocable, CALIBRATION, "--revocable", *base)
    monkeypatch.setenv("M2MESH_CHAIN", "arc:test")
    out = site.root / "on-arc.json"
    issue = ("cert", "issue", "--key", site.key("lab"), "--subject", site.ids["sensor"],
             "--type", "m2mesh.calibration", "--field", "a=1", "--out", out)  # fmt: skip
    one_line_error(mesh(capsys, *issue, "--revocable", *base), "local ledger file only")
    assert not out.exists()
    revoke = ("cert", "revoke", revocable, "--key", site.key("lab"), *base)
    one_line_error(mesh(capsys, *revoke), "without --revocable")
    monkeypatch.delenv("M2MESH_CHAIN")
    other = site.root / "other-ledger.db"
    ok(mesh(capsys, "ledger", "init", "--db", other))
    one_line_error(mesh(capsys, "cert", "verify", revocable, "--ledger", other),
                   "local ledger file only")  # fmt: skip

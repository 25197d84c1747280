"""What `mesh cert …` does: issue, show, reveal, verify and revoke machine certificates
(BRC-52); the parser and every option's help are in `agents.cert_cli`.

A certifier (a vendor: model, serial, firmware; a calibration lab: calibrated_until,
accuracy) issues a certificate to a subject (a machine's peer id). The file `issue`
writes is the whole of what the subject holds -- the certificate and its master keyring
-- so it is written like a key (mode 0600, never overwritten without ``--force``). The
subject reveals chosen fields to one verifier at a time (`reveal`); a verifier checks
the signature, whom it trusts to certify, the revocation output and what it requires
of the fields (`verify`: ``VALID …``, exit 0, or ``INVALID <code>: <reason>``, exit 1,
the codes of `mesh.certs.CertificateError`).

Revocation (`mesh.certs.revocation`): ``--revocable`` funds one small output from the
certifier's agent wallet (``DIR/agent.db``, while no agent runs on it) to a key derived
for that certificate and never adopted into the wallet; `revoke` spends it. Spent means
revoked. Both, and ``verify --ledger``, work on a local ledger file only (`LOCAL_ONLY`:
refused when ``$M2MESH_CHAIN`` names the BSV network). This module reads and writes
files and drives the ledger and the wallet; the certificate logic is in `mesh.certs`.
Errors are one line (`agents.cli`).
(docs/ARCHITECTURE.md §3, §5)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import fcntl
import json
import os
import secrets
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bsv.keys import PublicKey

from agents.chain_choice import default_chain, is_local
from agents.ledger_cli import DEFAULT_LEDGER, wait_until_unlocked
from mesh.certs import (
    NO_REVOCATION,
    Certificate,
    CertificateError,
    issue,
    keyring_for,
    open_fields,
    type_id,
)
from mesh.certs.conditions import Condition, parse_condition
from mesh.certs.revocation import (
    REVOCATION_SATOSHIS,
    Revocation,
    brc52_outpoint,
    judge,
    outpoint_of,
    revocation_key,
    revocation_label,
    revocation_script,
    revocation_spend,
)
from mesh.chain.base import Utxo
from mesh.chain.errors import TxRejected, WalletError
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Prevout
from mesh.chain.tx import Outpoint, p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.errors import MeshError
from mesh.identity import Identity, load_identity, parse_peer_id, write_private_json
from mesh.store import Store

KNOWN_TYPES = ("m2mesh.calibration", "m2mesh.vendor")
"""Certificate types shown by name (others by their base64 id, or a name given with
``--type``): a calibration lab's and a machine vendor's."""


class CertCliError(MeshError):
    """A usage problem with `mesh cert`, said in one line."""


LOCAL_ONLY = (
    "revocation outputs are issued and spent on a local ledger file only (not yet on the "
    "BSV network, where agents on --chain arc:… look the outpoint up and refuse one they "
    "cannot find); there, issue without --revocable and bound the certificate in time "
    "(e.g. calibrated_until, required >= today)"
)
"""Why `--revocable`, `revoke` and `verify --ledger` are for a local ledger (one line)."""


def _local_ledger_only(what: str) -> None:
    """Refuse `what` when ``$M2MESH_CHAIN`` says the agents run on the BSV network."""
    try:
        choice = default_chain()
    except ValueError:
        return  # (`mesh run` says what is wrong with it)
    if not is_local(choice):
        raise CertCliError(f"{what} with M2MESH_CHAIN={choice}: {LOCAL_ONLY}")


# ---------------------------------------------------------------- inputs


def _identity(path: Path, passphrase_env: str | None) -> Identity:
    passphrase = None
    if passphrase_env is not None:
        value = os.environ.get(passphrase_env)
        if not value:
            raise CertCliError(f"--passphrase-env {passphrase_env}: the variable is unset or empty")
        passphrase = value.encode()
    return load_identity(path, passphrase)


def _peer(text: str, option: str) -> PublicKey:
    try:
        return PublicKey(parse_peer_id(text))
    except ValueError as exc:
        raise CertCliError(f"{option}: {exc}") from None


def parse_type(text: str) -> str:
    """A certificate type from ``--type``: a readable name (stored as `type_id`), or a
    raw type already (base64 of 32 bytes)."""
    try:
        if len(base64.b64decode(text, validate=True)) == 32:
            return text
    except (binascii.Error, ValueError):
        pass
    if not text.strip():
        raise CertCliError("--type: give a name such as m2mesh.calibration")
    return type_id(text)


def type_name(type_: str, names: Sequence[str] = ()) -> str | None:
    """The readable name of `type_`: one of `KNOWN_TYPES` or of `names`, else None."""
    return next((n for n in (*names, *KNOWN_TYPES) if type_id(n) == type_), None)


def parse_fields(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` options as a mapping; one name once."""
    values: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise CertCliError(
                f"--field {item!r}: write NAME=VALUE (e.g. calibrated_until=2027-06-30)"
            )
        if name in values:
            raise CertCliError(f"--field {name}: given twice")
        values[name] = value
    return values


@dataclass(frozen=True)
class CertFile:
    """A certificate file: the certificate, and the keyrings that came with it."""

    certificate: Certificate
    master_keyring: Mapping[str, str] | None
    keyring: Mapping[str, str] | None


def read_cert_file(path: Path) -> CertFile:
    """Read a certificate file. A file that cannot be read is a `CertCliError`; one that
    is not a certificate a `CertificateError` (code ``format``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CertCliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CertCliError(f"{path}: cannot read it ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CertificateError("format", f"{path} is not JSON ({exc})") from None
    certificate = Certificate.from_json(document)
    return CertFile(
        certificate,
        _keyring(document, "masterKeyring"),
        _keyring(document, "keyring"),
    )


def _keyring(document: Mapping[str, Any], member: str) -> Mapping[str, str] | None:
    keyring = document.get(member)
    if keyring is None:
        return None
    if not isinstance(keyring, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keyring.items()
    ):
        raise CertificateError("format", f"{member} must be an object of strings")
    return keyring


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise CertCliError(f"{path} already exists; refusing to overwrite it (--force does)")
    if not path.parent.is_dir():
        raise CertCliError(f"cannot write {path}: {path.parent} is not a directory")


def write_private(path: Path, document: Mapping[str, Any], force: bool) -> None:
    """Write `document` as JSON to `path`, atomically, mode 0600."""
    _refuse_overwrite(path, force)
    try:
        write_private_json(path, document)
    except OSError as exc:
        raise CertCliError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- wallet and ledger


def _open_ledger(path: Path) -> LocalLedger:
    wait_until_unlocked(path, "ledger")
    return LocalLedger.open(path)


@contextmanager
def _no_agent_running(data_dir: Path) -> Iterator[None]:
    """Hold ``DATA_DIR/agent.lock`` (as `mesh run` does) while we spend from the wallet:
    refuse at once when an agent runs on that data dir and owns its wallet."""
    fd = os.open(data_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CertCliError(
                f"an agent (pid {holder}) is running with --data-dir {data_dir}: its wallet "
                "is in use; stop it first, then issue"
            ) from None
        os.ftruncate(fd, 0)  # (an agent started meanwhile names us as the holder)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def _wallet(data_dir: Path, identity: Identity, ledger: LocalLedger) -> Iterator[Wallet]:
    """The wallet in ``data_dir/agent.db``, which must be `identity`'s."""
    path = data_dir / "agent.db"
    if not path.is_file():
        raise CertCliError(
            f"no agent wallet in {data_dir} ({path}): use the certifier agent's data dir, or "
            f"make one: mesh address --data-dir {data_dir} --key KEY, and fund that address"
        )
    wait_until_unlocked(path, "agent's store")
    with Store(path) as store:
        wallet = Wallet(store, identity, policy=ledger.policy)
        addresses = wallet.addresses()
        if addresses and wallet.address(0) not in addresses:
            raise CertCliError(
                f"the wallet in {data_dir} is not the wallet of --key ({identity.peer_id[:16]}…):"
                " use the certifier's own data dir"
            )
        yield wallet


def _sync(wallet: Wallet, ledger: LocalLedger) -> None:
    """Take the coins the ledger holds for the wallet's watched addresses (what an agent
    does every few seconds), so coins funded while no agent ran can pay."""
    for address in wallet.watch_addresses():
        wallet.add_utxos(ledger.utxos(p2pkh_script(address)))


def fund_revocation(
    identity: Identity, serial: str, data_dir: Path, ledger_path: Path, mine: bool
) -> str:
    """Pay `REVOCATION_SATOSHIS` from the wallet in `data_dir` to the revocation key of
    certificate `serial`, broadcast on the ledger; return the BRC-52 outpoint."""
    if not data_dir.is_dir():
        raise CertCliError(f"--data-dir {data_dir} is not a directory")
    with (
        _no_agent_running(data_dir),
        _open_ledger(ledger_path) as ledger,
        _wallet(data_dir, identity, ledger) as wallet,
    ):
        _sync(wallet, ledger)
        script = revocation_script(identity.key, serial)
        try:
            draft = wallet.fund(
                [(script, REVOCATION_SATOSHIS)], reservation=revocation_label(serial)
            )
        except WalletError as exc:
            raise CertCliError(
                f"the wallet in {data_dir} cannot pay the revocation output"
                f" ({REVOCATION_SATOSHIS} sat + fee): {exc}; fund it: mesh ledger fund --db"
                f' {ledger_path} "$(mesh address --data-dir {data_dir})" 100000 --mine'
            ) from None
        try:
            ledger.submit(draft.raw)
        except TxRejected:
            wallet.abandon(draft.txid)
            raise
        wallet.mark_broadcast(draft.txid)
        if mine:
            ledger.mine()
    return brc52_outpoint(Outpoint(draft.txid, 0))  # (the output comes before change)


# ---------------------------------------------------------------- commands


def cmd_issue(args: argparse.Namespace) -> int:
    """Issue a certificate for a subject; write it with the subject's master keyring."""
    certifier = _identity(args.key, args.passphrase_env)
    subject = _peer(args.subject, "--subject")
    type_ = parse_type(args.type)
    values = parse_fields(args.field)
    if not args.revocable and (args.data_dir or args.ledger or args.mine):
        raise CertCliError("--data-dir, --ledger and --mine go with --revocable")
    if args.revocable:
        _local_ledger_only("--revocable")
    if args.revocable and args.data_dir is None:
        raise CertCliError("--revocable needs --data-dir DIR: the certifier agent's wallet pays")
    _refuse_overwrite(args.out, args.force)
    serial = base64.b64encode(secrets.token_bytes(32)).decode()
    issue(certifier.key, subject, type_, values, serial_number=serial)  # fits, before we pay
    outpoint = NO_REVOCATION
    if args.revocable:
        ledger = args.ledger or DEFAULT_LEDGER
        outpoint = fund_revocation(certifier, serial, args.data_dir, ledger, args.mine)
        print(f"revocable: revocation outpoint {outpoint} on {ledger}", file=sys.stderr)
    else:
        print("not revocable (issued without --revocable)", file=sys.stderr)
    issued = issue(
        certifier.key, subject, type_, values, revocation_outpoint=outpoint, serial_number=serial
    )
    try:
        write_private(args.out, issued.to_json(), args.force)
    except CertCliError as exc:
        if outpoint != NO_REVOCATION:  # say what was paid, to find it again
            raise CertCliError(f"{exc} (serial {serial}, revocation outpoint {outpoint})") from None
        raise
    print(serial)
    print(
        f"wrote {args.out} (mode 0600): the subject's certificate and master keyring",
        file=sys.stderr,
    )
    return 0


def _open_with(key: Identity, cert_file: CertFile) -> tuple[str, dict[str, str]]:
    """The values `key` opens: the subject's master keyring, else a verifier's keyring.
    Returns whose view it is ("subject" / "verifier") and the values."""
    cert = cert_file.certificate
    if key.peer_id == cert.subject and cert_file.master_keyring is not None:
        certifier = PublicKey(cert.certifier)
        values = open_fields(key.key, certifier, cert, cert_file.master_keyring, master=True)
        return "subject", dict(sorted(values.items()))
    if cert_file.keyring is not None:
        subject = PublicKey(cert.subject)
        values = open_fields(key.key, subject, cert, cert_file.keyring, master=False)
        return "verifier", dict(sorted(values.items()))
    raise CertificateError(
        "keyring",
        "nothing in the file opens with this key: it has no keyring for a verifier"
        + ("" if cert_file.master_keyring is None else ", and the key is not the subject's"),
    )


def cmd_show(args: argparse.Namespace) -> int:
    """Print what a certificate file holds (and the values a key opens)."""
    cert_file = read_cert_file(args.file)
    cert = cert_file.certificate
    try:
        cert.verify()
        signature = "valid"
    except CertificateError as exc:
        signature = f"INVALID ({exc.reason})"
    whose, values = (None, None)
    if args.key is not None:
        whose, values = _open_with(_identity(args.key, args.passphrase_env), cert_file)
    name = type_name(cert.type, args.type)
    revealed = None if cert_file.keyring is None else sorted(cert_file.keyring)
    revocable = cert.revocation_outpoint != NO_REVOCATION
    if args.json:
        document = {**cert.to_json(), "fields": list(cert.fields), "type_name": name}
        del document["signature"]
        document |= {"revocable": revocable, "signature_valid": signature == "valid"}
        document |= {"master_keyring": cert_file.master_keyring is not None}
        print(json.dumps(document | {"revealed": revealed, "values": values}, indent=1))
        return 0
    print(f"type        {name or 'unknown'} ({cert.type})")
    print(f"serial      {cert.serial_number}")
    print(f"subject     {cert.subject}")
    print(f"certifier   {cert.certifier}")
    print(f"revocation  {cert.revocation_outpoint if revocable else 'not revocable'}")
    print(f"signature   {signature}")
    print(f"fields      {', '.join(cert.fields) or '(none)'}")
    if cert_file.master_keyring is not None:
        print("keyring     master: the subject's own copy (keep it private)")
    if revealed is not None:
        print(f"revealed    {', '.join(revealed) or '(none)'} (a keyring for one verifier)")
    if values is not None:
        print(f"values      opened as the {whose}:")
        width = max((len(n) for n in values), default=0)
        for field_name, value in values.items():
            print(f"  {field_name:<{width}}  {_printable(value)}")
    return 0


def _printable(value: str) -> str:
    """A field value to print: as it is, or JSON-quoted when it holds control
    characters (a value is someone else's text; it must not drive the terminal)."""
    return value if value.isprintable() else json.dumps(value)


def cmd_reveal(args: argparse.Namespace) -> int:
    """Write the certificate with a keyring revealing the chosen fields to one verifier."""
    subject = _identity(args.key, args.passphrase_env)
    verifier = _peer(args.to, "--to")
    cert_file = read_cert_file(args.file)
    cert = cert_file.certificate
    cert.verify()
    if cert_file.master_keyring is None:
        raise CertCliError(
            f"{args.file} has no masterKeyring: reveal from the subject's copy (what"
            " `mesh cert issue` wrote)"
        )
    if subject.peer_id != cert.subject:
        raise CertCliError(f"--key {args.key} is not this certificate's subject ({cert.subject})")
    names = list(dict.fromkeys(args.field))
    unknown = [n for n in names if n not in cert.fields]
    if unknown:
        raise CertCliError(
            f"--field {unknown[0]}: the certificate has no such field"
            f" (it has {', '.join(cert.fields)})"
        )
    keyring = keyring_for(subject.key, cert, cert_file.master_keyring, verifier, names)
    write_private(args.out, {**cert.to_json(), "keyring": keyring}, args.force)
    print(f"wrote {args.out}: reveals {', '.join(names)} to {args.to}", file=sys.stderr)
    return 0


def _revocation_line(cert: Certificate, ledger_path: Path | None) -> str:
    """What the ledger says of the revocation outpoint; `CertificateError("revoked")`
    when spent, `CertCliError` when the ledger does not hold it."""
    if cert.revocation_outpoint == NO_REVOCATION:
        return "not revocable (the certifier cannot withdraw it)"
    if ledger_path is None:
        return f"{cert.revocation_outpoint} not checked (give --ledger)"
    outpoint = outpoint_of(cert.revocation_outpoint)
    with _open_ledger(ledger_path) as ledger:
        output = ledger.output(outpoint.txid, outpoint.vout)
    state = judge(cert, output.state)
    if state is Revocation.REVOKED:
        raise CertificateError(
            "revoked",
            f"the certifier spent the revocation outpoint {cert.revocation_outpoint}"
            f" (in {output.spent_by})",
        )
    if state is Revocation.UNKNOWN:
        raise CertCliError(
            f"revocation outpoint {cert.revocation_outpoint} not on this chain ({ledger_path}):"
            f" check it against the ledger the certifier uses ({LOCAL_ONLY})"
        )
    return f"not revoked: {cert.revocation_outpoint} is unspent on {ledger_path}"


def _verify(args: argparse.Namespace, conditions: list[Condition]) -> list[str]:
    """The checks of `mesh cert verify`, in order; what was proved, or a
    `CertificateError` naming the first that failed."""
    trusted = [_peer(text, "--certifier").hex() for text in args.certifier]
    key = None if args.key is None else _identity(args.key, args.passphrase_env)
    cert_file = read_cert_file(args.file)
    cert = cert_file.certificate
    cert.verify()
    name = type_name(cert.type) or cert.type
    lines = [f"VALID {name} certificate of {cert.subject}"]
    if trusted and cert.certifier not in trusted:
        raise CertificateError(
            "certifier", f"certified by {cert.certifier}, none of the --certifier given"
        )
    lines.append(f"  signature   of certifier {cert.certifier}, over every field")
    lines.append(
        "  certifier   one you trust (--certifier)"
        if trusted
        else "  certifier   NOT CHECKED: anyone can sign; --certifier ID names whom you trust"
    )
    lines.append(f"  revocation  {_revocation_line(cert, args.ledger)}")
    values: dict[str, str] = {}
    if key is not None:
        whose, values = _open_with(key, cert_file)
        for field_name, value in values.items():
            lines.append(f"  field       {field_name} = {_printable(value)} (as the {whose})")
        if not values:
            lines.append("  field       (none revealed)")
    today = datetime.now(UTC).date()
    for condition in conditions:
        failed = condition.check(values, today)
        if failed is not None:
            code = "expired" if condition.today else "condition"  # (as profiles say it)
            raise CertificateError(code, f"{condition}: {failed}")
        on = f" (today is {today.isoformat()})" if condition.today else ""
        lines.append(f"  require     {condition}: holds{on}")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a certificate: VALID and what was proved (0), or INVALID code: reason (1)."""
    conditions = [parse_condition(text) for text in args.require]
    if conditions and args.key is None:
        raise CertCliError("--require needs --key: the verifier's key opens the revealed fields")
    try:
        lines = _verify(args, conditions)
    except CertificateError as exc:
        print(f"INVALID {exc.code}: {exc.reason}")
        return 1
    print("\n".join(lines))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Spend a certificate's revocation output: from then on it is revoked."""
    _local_ledger_only("mesh cert revoke")
    certifier = _identity(args.key, args.passphrase_env)
    cert = read_cert_file(args.file).certificate
    cert.verify()
    if cert.certifier != certifier.peer_id:
        raise CertCliError(
            f"--key {args.key} is not this certificate's certifier ({cert.certifier});"
            " only the certifier can revoke it"
        )
    if cert.revocation_outpoint == NO_REVOCATION:
        raise CertCliError(f"{args.file} is not revocable (issued without --revocable)")
    outpoint = outpoint_of(cert.revocation_outpoint)
    ledger_path = args.ledger or DEFAULT_LEDGER
    with _open_ledger(ledger_path) as ledger:
        output = ledger.output(outpoint.txid, outpoint.vout)
        state = judge(cert, output.state)
        if state is Revocation.REVOKED:
            raise CertCliError(
                f"already revoked: {cert.revocation_outpoint} was spent in {output.spent_by}"
            )
        if state is Revocation.UNKNOWN or output.satoshis is None or output.script is None:
            raise CertCliError(
                f"revocation outpoint {cert.revocation_outpoint} not on this chain"
                f" ({ledger_path}; {LOCAL_ONLY})"
            )
        with _wallet(args.data_dir, certifier, ledger) as wallet:
            pay_to = p2pkh_script(wallet.new_address())
            raw = revocation_spend(
                revocation_key(certifier.key, cert.serial_number),
                outpoint,
                Prevout(output.satoshis, output.script),
                pay_to,
                ledger.policy,
            )
            txid = ledger.submit(raw)
            returned = ledger.output(txid, 0).satoshis or 0
            wallet.add_utxos([Utxo(txid, 0, returned, pay_to)])
        if args.mine:
            ledger.mine()
    print(txid)
    print(
        f"revoked {cert.serial_number}: spent {cert.revocation_outpoint};"
        f" {returned} sat back to the wallet in {args.data_dir}",
        file=sys.stderr,
    )
    return 0

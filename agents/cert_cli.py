"""`mesh cert …`: issue, show, reveal, verify and revoke machine certificates (BRC-52).

    mesh cert issue  --key CERTIFIER.key --subject PEER_ID --type NAME
                     --field NAME=VALUE [--field …] --out FILE [--force]
                     [--revocable --data-dir DIR [--ledger FILE] [--mine]]
    mesh cert show   FILE [--key KEY] [--type NAME …] [--json]
    mesh cert reveal FILE --key SUBJECT.key --to VERIFIER_ID --field NAME [--field …]
                     --out FILE [--force]
    mesh cert verify FILE [--key VERIFIER.key] [--certifier ID …] [--ledger FILE]
                     [--require 'FIELD OP VALUE' …]
    mesh cert revoke FILE --key CERTIFIER.key --data-dir DIR [--ledger FILE] [--mine]

This module is the parser and every option's help; what each action does, and the
rules of the files it writes and of revocation, are in `agents.cert_commands`; the
certificate logic in `mesh.certs`. Errors are one line (`agents.cli`).
(docs/ARCHITECTURE.md §3, §5)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.cert_commands import (
    cmd_issue,
    cmd_reveal,
    cmd_revoke,
    cmd_show,
    cmd_verify,
)
from agents.ledger_cli import DEFAULT_LEDGER
from mesh.certs.revocation import REVOCATION_SATOSHIS

# ---------------------------------------------------------------- parser

_KEY_PASSPHRASE = "a sealed --key's passphrase is in environment variable VAR"
_LEDGER_HELP = f"ledger file (default {DEFAULT_LEDGER})"


def add_cert_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cert`` and its actions to the `mesh` parser's subcommands."""
    cert = subparsers.add_parser(
        "cert",
        help="machine certificates (BRC-52): issue, show, reveal, verify, revoke",
        description="Certificates a certifier signs about a machine -- a vendor: model, "
        "serial, firmware; a calibration lab: calibrated_until, accuracy -- with every field "
        "encrypted: the machine (the subject) reveals only the fields a verifier needs, to "
        "that verifier alone, and the verifier checks the certifier's signature, whom it "
        "trusts, whether the certificate was revoked (a spent output on the ledger) and "
        "what it requires of the fields. The format is BRC-52, as the BSV TypeScript SDK "
        "has it. Revocation (issue --revocable, revoke, verify --ledger) works on a local "
        "ledger file only: agents on the BSV network (--chain arc:…) look the revocation "
        "outpoint up on their own chain and refuse one they cannot find; there, issue "
        "without --revocable and bound the certificate in time (e.g. calibrated_until).",
    )
    actions = cert.add_subparsers(dest="cert_command", required=True, metavar="ACTION")

    def key_options(parser: argparse.ArgumentParser, whose: str, required: bool) -> None:
        parser.add_argument("--key", type=Path, required=required, help=whose)
        parser.add_argument("--passphrase-env", metavar="VAR", help=_KEY_PASSPHRASE)

    issue_ = actions.add_parser(
        "issue",
        help="certify fields of a subject (as its certifier)",
        description="Issue a certificate: the certifier (--key) vouches for NAME=VALUE "
        "fields of the subject (its peer id). The --out file gets the BRC-52 JSON and the "
        "subject's masterKeyring -- all the subject needs, and secret: mode 0600, never "
        "overwritten without --force. Prints the serial number. Without --revocable the "
        "certificate can never be withdrawn; with it, the wallet of the certifier's agent "
        f"(--data-dir, no agent running on it) pays {REVOCATION_SATOSHIS} sat to a key "
        "derived for this certificate alone, and `mesh cert revoke` spends it later: spent "
        "means revoked. Revocation outputs live on a local ledger file only (refused when "
        "M2MESH_CHAIN names the BSV network): there, issue without --revocable.",
    )
    key_options(issue_, "the certifier's identity key file", True)
    issue_.add_argument(
        "--subject",
        required=True,
        metavar="PEER_ID",
        help="the certified machine's peer id (`mesh id --key ITS.key`)",
    )
    issue_.add_argument(
        "--type",
        required=True,
        metavar="NAME",
        help="certificate type: a readable name such as m2mesh.calibration or m2mesh.vendor "
        "(stored as base64 of its SHA-256), or a raw BRC-52 type (base64 of 32 bytes)",
    )
    issue_.add_argument(
        "--field",
        action="append",
        required=True,
        metavar="NAME=VALUE",
        help="a certified field, e.g. calibrated_until=2027-06-30 (repeat)",
    )
    issue_.add_argument("--out", type=Path, required=True, help="certificate file to write")
    issue_.add_argument("--force", action="store_true", help="overwrite an existing --out")
    issue_.add_argument(
        "--revocable",
        action="store_true",
        help="fund a revocation output from the certifier agent's wallet (local ledger "
        "file only: agents on --chain arc:… would refuse the certificate, revocation)",
    )
    issue_.add_argument(
        "--data-dir",
        type=Path,
        help="the certifier agent's data dir, whose wallet pays (--revocable)",
    )
    issue_.add_argument("--ledger", type=Path, help=_LEDGER_HELP)
    issue_.add_argument("--mine", action="store_true", help="mine a block right after funding")
    issue_.set_defaults(func=cmd_issue)

    show = actions.add_parser(
        "show",
        help="print what a certificate file holds",
        description="Print a certificate's type, serial number, subject, certifier, "
        "revocation outpoint, whether its signature is valid, and its field names (the "
        "values are encrypted). With the subject's --key and a masterKeyring in the file, "
        "or a verifier's --key and a keyring revealed to it, also the values it opens.",
    )
    show.add_argument("file", type=Path, help="certificate file (JSON)")
    key_options(show, "open the values with this key (the subject's or a verifier's)", False)
    show.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="NAME",
        help="name the type by NAME when it matches (repeat)",
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    reveal = actions.add_parser(
        "reveal",
        help="reveal chosen fields to one verifier (as the subject)",
        description="Write the certificate with a keyring that reveals only the fields "
        "named, only to the verifier named (BRC-52's verifiable certificate: the "
        'certificate JSON plus "keyring"). Send that file; no other field, and nothing '
        "to anyone else, can be opened from it.",
    )
    reveal.add_argument(
        "file", type=Path, help="the subject's certificate file (with masterKeyring)"
    )
    key_options(reveal, "the subject's identity key file", True)
    reveal.add_argument("--to", required=True, metavar="PEER_ID", help="the verifier's peer id")
    reveal.add_argument(
        "--field", action="append", required=True, metavar="NAME", help="a field to reveal (repeat)"
    )
    reveal.add_argument("--out", type=Path, required=True, help="file to write")
    reveal.add_argument("--force", action="store_true", help="overwrite an existing --out")
    reveal.set_defaults(func=cmd_reveal)

    verify = actions.add_parser(
        "verify",
        help="check a certificate: signature, certifier, revocation, fields",
        description="Check a certificate and print VALID with what was proved (exit 0), or "
        "INVALID <code>: <reason> (exit 1). It checks the certifier's signature "
        "(signature); with --certifier, that the certifier is one you trust (certifier); with "
        "--ledger, that the revocation output is unspent (revoked); with --key, opens the "
        "fields revealed to you (keyring); with --require, that they meet each condition "
        "(expired: one on today fails; condition: another fails). A file that is not a "
        "certificate is INVALID format; a revocation outpoint the ledger does not hold is "
        "refused (exit 1).",
    )
    verify.add_argument("file", type=Path, help="certificate file (JSON)")
    key_options(verify, "the verifier's identity key file (opens the revealed fields)", False)
    verify.add_argument(
        "--certifier",
        action="append",
        default=[],
        metavar="PEER_ID",
        help="a certifier you trust (repeat); any other is INVALID",
    )
    verify.add_argument(
        "--ledger",
        type=Path,
        help="check the revocation outpoint on this ledger file (a local ledger only)",
    )
    verify.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="'FIELD OP VALUE'",
        help="a condition on a revealed field (repeat): OP one of >= <= == !=, VALUE a "
        "literal or today (UTC); yyyy-mm-dd compare as dates, numbers as numbers, the rest "
        "as text, e.g. 'calibrated_until >= today'",
    )
    verify.set_defaults(func=cmd_verify)

    revoke = actions.add_parser(
        "revoke",
        help="revoke a certificate (as its certifier)",
        description="Spend the certificate's revocation output -- signed by the key derived "
        "for it, the fee from the ledger's fee rate, the rest back to a new address of the "
        "certifier agent's wallet -- and broadcast it. From then on `mesh cert verify "
        "--ledger` says INVALID revoked. Refuses a certificate that is not revocable, a key "
        "that is not its certifier's, and one already revoked. On a local ledger file "
        "only (refused when M2MESH_CHAIN names the BSV network).",
    )
    revoke.add_argument("file", type=Path, help="certificate file (JSON)")
    key_options(revoke, "the certifier's identity key file", True)
    revoke.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="the certifier agent's data dir: its wallet gets the coins back",
    )
    revoke.add_argument("--ledger", type=Path, help=_LEDGER_HELP)
    revoke.add_argument("--mine", action="store_true", help="mine a block right after")
    revoke.set_defaults(func=cmd_revoke)

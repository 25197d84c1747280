"""The profile's certificates: what the agent holds and what it requires of peers.
Read by `agents.profile`; the exchange itself is `agents.proofs`.

- ``[[certificates]]``: a certificate issued to this agent's key (`mesh cert issue`
  writes the file: the BRC-52 JSON with its ``masterKeyring``), and ``disclose``, the
  only fields the agent will ever reveal from it (to a peer that asks for them)::

      [[certificates]]
      file = "certs/calibration.json"
      disclose = ["calibrated_until", "accuracy"]

- ``[requirements.NAME]``: what a peer must prove -- a certificate of ``type`` from one
  of ``certifiers`` (peer ids), revealing ``reveal``, whose values meet ``conditions``
  (``FIELD OP VALUE``, `mesh.certs.conditions`)::

      [requirements.calibrated]
      type = "m2mesh.calibration"
      certifiers = ["02ab…"]
      reveal = ["calibrated_until"]
      conditions = ["calibrated_until >= today"]

  A want with ``require = "calibrated"`` buys only from providers that prove it; a
  service with ``require = "NAME"`` sells only to buyers that do.

Problems are reported as the profile's (key, problem). (docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path

from mesh.certs.certificate import Certificate, CertificateError, type_id
from mesh.certs.conditions import ConditionError, parse_condition
from mesh.certs.policy import Held, Requirement
from mesh.identity import parse_peer_id

CERTIFICATE_KEYS = ("file", "disclose")
REQUIREMENT_KEYS = ("type", "certifiers", "reveal", "conditions")


class CertsConfigError(ValueError):
    """A certificates or requirements table's problem: `key` (relative to the profile)
    and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def held_certificates(raw: object, base: Path) -> tuple[Held, ...]:
    """The ``[[certificates]]`` array: each file read, parsed and its signature checked
    (whose key it is for is checked when the agent starts: `check_subject`)."""
    if not isinstance(raw, list):
        raise CertsConfigError("certificates", "expected an array of tables")
    held = []
    for i, item in enumerate(raw):
        where = f"certificates[{i}]"
        table = _table(item, where, CERTIFICATE_KEYS)
        name = _string(table, where, "file")
        path = base / name
        try:
            data = json.loads(path.read_text())
            cert = Certificate.from_json(data)
            cert.verify()
        except FileNotFoundError:
            raise CertsConfigError(f"{where}.file", f"{path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise CertsConfigError(f"{where}.file", f"{path}: {exc}") from None
        except CertificateError as exc:
            raise CertsConfigError(f"{where}.file", f"{path}: {exc}") from None
        keyring = data.get("masterKeyring")
        if not isinstance(keyring, dict) or set(keyring) != set(cert.fields):
            raise CertsConfigError(
                f"{where}.file",
                f"{path}: no masterKeyring for every field (not the subject's copy?)",
            )
        disclose = _strings(table, where, "disclose")
        unknown = [f for f in disclose if f not in cert.fields]
        if unknown:
            raise CertsConfigError(f"{where}.disclose", f"no field {unknown[0]!r} in {name}")
        held.append(Held(cert, {str(k): str(v) for k, v in keyring.items()}, disclose))
    return tuple(held)


def requirements(raw: object) -> dict[str, Requirement]:
    """The ``[requirements]`` table: one `Requirement` per name."""
    if not isinstance(raw, dict):
        raise CertsConfigError("requirements", "expected a table of tables")
    found = {}
    for name, item in raw.items():
        where = f"requirements.{name}"
        table = _table(item, where, REQUIREMENT_KEYS)
        type_name = _string(table, where, "type")
        certifiers = _strings(table, where, "certifiers")
        if not certifiers:
            raise CertsConfigError(f"{where}.certifiers", "name at least one certifier")
        for certifier in certifiers:
            try:
                parse_peer_id(certifier)
            except ValueError as exc:
                raise CertsConfigError(f"{where}.certifiers", str(exc)) from None
        reveal = _strings(table, where, "reveal")
        if not reveal:
            raise CertsConfigError(f"{where}.reveal", "name at least one field to reveal")
        texts = _strings(table, where, "conditions") if "conditions" in table else ()
        try:
            conditions = tuple(parse_condition(text) for text in texts)
        except ConditionError as exc:
            raise CertsConfigError(f"{where}.conditions", str(exc)) from None
        for condition, text in zip(conditions, texts, strict=True):
            if condition.field not in reveal:
                problem = f"{text!r} needs field {condition.field!r} in reveal"
                raise CertsConfigError(f"{where}.conditions", problem)
        found[str(name)] = Requirement(
            str(name), _type(type_name), type_name, certifiers, reveal, conditions
        )
    return found


def check_uses(path_key: str, require: str, known: Mapping[str, Requirement]) -> None:
    """A want's or service's ``require`` must name a requirement of the profile."""
    if require and require not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise CertsConfigError(path_key, f"no requirement {require!r} (defined: {listed})")


def check_subject(held: tuple[Held, ...], public_key_hex: str) -> None:
    """Every held certificate must be issued to this agent's key (at start)."""
    for i, h in enumerate(held):
        if h.certificate.subject != public_key_hex:
            raise CertsConfigError(
                f"certificates[{i}].file",
                f"issued to {h.certificate.subject[:16]}…, not to this agent's key",
            )


def _type(text: str) -> str:
    """A type given by readable name, or as base64 of 32 bytes itself."""
    try:
        if len(base64.b64decode(text, validate=True)) == 32:
            return text
    except (binascii.Error, ValueError):
        pass
    return type_id(text)


def _table(item: object, where: str, keys: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(item, dict):
        raise CertsConfigError(where, "expected a table")
    unknown = sorted(set(item) - set(keys))
    if unknown:
        raise CertsConfigError(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(keys)})")
    return item


def _string(table: Mapping[str, object], where: str, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise CertsConfigError(f"{where}.{key}", "is required (a non-empty string)")
    return value


def _strings(table: Mapping[str, object], where: str, key: str) -> tuple[str, ...]:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CertsConfigError(f"{where}.{key}", "is required (a list of strings)")
    return tuple(value)


__all__ = [
    "CertsConfigError",
    "check_subject",
    "check_uses",
    "held_certificates",
    "requirements",
]

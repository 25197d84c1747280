"""`mesh demo`'s certificates: a calibration lab certifies the vibration sensor, and the
quality lab buys readings only from a sensor that proves its calibration.

Before the site is set up, the demo makes a calibration lab (a certifier: one identity
key, no agent) and gives the quality lab a want of the vibration feed that requires a
``m2mesh.calibration`` certificate from that lab with ``calibrated_until >= today``,
revealing only ``calibrated_until``. Once the agents have keys (and before they start)
the lab issues the sensor's certificate -- calibrated until, accuracy, owner, serial --
into the sensor's data dir, and the sensor's profile copy holds it, disclosing only
the date and the accuracy. The owner and serial never leave the sensor. The same lab
accredits the quality lab as an inspection lab (``m2mesh.accreditation``): the robot
cell's work orders require it, and each part passport carries that certificate.
(docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.site_view import Roster, Statuses
from mesh.certs import issue, type_id
from mesh.identity import Identity, load_identity, save_identity

SENSOR = "vibration-sensor"
LAB = "quality-lab"
CALIBRATION = "m2mesh.calibration"
FILE = "calibration.json"
ACCREDITATION = "m2mesh.accreditation"
ACCREDITATION_FILE = "accreditation.json"
WANT = """
# (mesh demo) readings only from a sensor that proves its calibration
[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.1
max_price = 2
units = 20
budget = 100
prepay = 2
require = "calibrated"
"""


class DemoCertificates:
    """The calibration lab of one demo run and the profile changes it makes."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lab = Identity.generate()
        save_identity(self.lab, self.dir / "calibration-lab.key")
        self.until = (datetime.now(UTC).date() + timedelta(days=180)).isoformat()

    def quality_lab(self, source: Path) -> Path:
        """The quality lab's profile with the want and the requirement (a copy)."""
        rule = (
            "\n[requirements.calibrated]\n"
            f'type = "{CALIBRATION}"\n'
            f'certifiers = ["{self.lab.peer_id}"]   # the demo\'s calibration lab\n'
            'reveal = ["calibrated_until"]\n'
            'conditions = ["calibrated_until >= today"]\n'
        )
        copy = self.dir / f"{LAB}.toml"
        copy.write_text(source.read_text() + WANT + rule)
        return copy

    def certify(self, roster: Roster) -> None:
        """Issue the sensor's certificate into its data dir, and hold it in its profile
        copy (the site has made the keys; the agents have not started)."""
        if SENSOR not in roster.names:
            return
        data = roster.root / SENSOR
        sensor = load_identity(data / "identity.key")
        values = {
            "calibrated_until": self.until,
            "accuracy": "0.5 % of reading",
            "owner": "SenseCo Leasing GmbH",
            "serial": "VS7-2291-0042",
        }
        self._issue(data, sensor, CALIBRATION, values, FILE, ["calibrated_until", "accuracy"])

    def accredit(self, roster: Roster) -> None:
        """Issue the quality lab's accreditation as an inspection lab (the robot cell's
        work orders require it; the part passports carry it)."""
        if LAB not in roster.names:
            return
        data = roster.root / LAB
        lab = load_identity(data / "identity.key")
        values = {
            "scope": "dimensional inspection",
            "accreditation": "D-PL-20417-01-00",
            "accredited_until": (datetime.now(UTC).date() + timedelta(days=365)).isoformat(),
        }
        disclose = ["scope", "accreditation", "accredited_until"]
        self._issue(data, lab, ACCREDITATION, values, ACCREDITATION_FILE, disclose)

    def _issue(
        self,
        data: Path,
        subject: Identity,
        type_name: str,
        values: dict[str, str],
        file: str,
        disclose: list[str],
    ) -> None:
        """Issue a certificate to the agent of `data` and hold it in its profile copy."""
        issued = issue(self.lab.key, subject.key.public_key(), type_id(type_name), values)
        path = data / file
        path.write_text(json.dumps(issued.to_json(), indent=1))
        os.chmod(path, 0o600)
        shown = ", ".join(f'"{name}"' for name in disclose)
        with (data / "profile.toml").open("a") as profile:
            profile.write(
                "\n# (mesh demo) issued by the demo's calibration lab\n[[certificates]]\n"
                f'file = "{file}"\ndisclose = [{shown}]\n'
            )

    def report(self, roster: Roster, statuses: Statuses) -> list[str]:
        """What the quality lab saw proved (from its last status)."""
        if LAB not in roster.names or SENSOR not in roster.names:
            return []
        status = statuses.get(LAB) or {}
        proved = (status.get("certificates") or {}).get("proved", {})
        shown = proved.get(roster.ids[SENSOR])
        if not shown:
            return [f"certificates: the {SENSOR} proved nothing to the {LAB}"]
        fields = ", ".join(f"{k} {v}" for k, v in shown[0]["fields"].items())
        return [
            "",
            f"certificates: {SENSOR} proved to {LAB}: {fields}",
            f"  (certified by calibration lab {self.lab.peer_id[:16]}…; owner, serial hidden)",
        ]


__all__ = ["ACCREDITATION", "DemoCertificates"]

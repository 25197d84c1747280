"""Vendor profiles: what an agent is, sells and buys, loaded from TOML and checked.

A profile is the only file a vendor writes. Every mistake -- an unknown key, a
wrong type, a negative price, a missing key file -- is a `ProfileError` whose
message names the file, the key (as a dotted path such as ``services[1].price``)
and the problem. `profiles/README.md` documents every key by example.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mesh.anchoring.retention import Keep, RetentionPolicy
from mesh.channel.admission import AdmissionLimits
from mesh.discovery.table import parse_static
from mesh.errors import MeshError
from mesh.identity import parse_peer_id
from mesh.session import DEFAULT_SITE, site_problem

KINDS = ("tool-time", "data-feed", "call")

T = TypeVar("T")


class ProfileError(MeshError):
    """A profile problem, naming the file, the key and what is wrong."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class ServiceSpec:
    """One service the agent sells."""

    id: str
    kind: str
    unit: str
    price: int
    tick: float
    credit: int
    handler: str
    buyers: tuple[str, ...]
    description: str = ""

    def may_buy(self, peer_id: str) -> bool:
        """Whether `peer_id` is allowed to buy this service."""
        return "*" in self.buyers or peer_id in self.buyers


@dataclass(frozen=True)
class WantSpec:
    """One service the agent buys, as the buyer understands it: what kind of service,
    and for tool time how long one unit lasts (the buyer counts no unit faster)."""

    service: str
    max_price: int
    units: int
    budget: int
    prepay: int
    kind: str
    tick: float = 1.0
    request: str = ""
    deadline: float = 0.0
    """Seconds without a unit before an order ends (0: 10 ticks, at least 5 s)."""

    def wait_limit(self) -> float:
        """How long an order waits for its next unit before it ends."""
        return self.deadline or max(5.0, 10 * self.tick)


@dataclass(frozen=True)
class RetentionSpec:
    """The profile's ``[retention]``: how long what is settled stays in the stores."""

    records: RetentionPolicy = field(default_factory=RetentionPolicy)
    channels_days: float = 30.0
    wallet_days: float = 1.0
    interval: float = 3600.0
    """Seconds between two retention passes."""


@dataclass(frozen=True)
class Profile:
    """A validated agent profile."""

    path: Path
    name: str
    vendor: str
    site: str
    key_file: str
    passphrase_env: str | None
    mailbox: str
    interfaces: tuple[str, ...]
    static_peers: tuple[str, ...]
    discovery_ttl: int
    capacity: int
    lifetime_blocks: int
    window: int
    heartbeat: float
    dead_after: float
    services: tuple[ServiceSpec, ...] = ()
    wants: tuple[WantSpec, ...] = ()
    anchor_every: int = 1000
    anchor_seconds: float = 10.0
    receipt_interval: float = 2.0
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    retention: RetentionSpec = field(default_factory=lambda: RetentionSpec())
    extra: dict[str, Any] = field(default_factory=dict)

    def service(self, service_id: str) -> ServiceSpec | None:
        """The service this agent sells under `service_id`, if any."""
        return next((s for s in self.services if s.id == service_id), None)

    def offers(self) -> tuple[str, ...]:
        """What it sells in short form, ``id=price/unit`` each (mDNS and handshake)."""
        return tuple(f"{s.id}={s.price}/{s.unit}" for s in self.services)

    def summary(self) -> str:
        """The short service list advertised over mDNS: ``id=price/unit,...``."""
        return ",".join(self.offers())


class _Table:
    """A TOML table being read: typed getters that know the key path and the file."""

    def __init__(self, path: Path, where: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ProfileError(path, where or "(top level)", "expected a table")
        self.path, self.where, self.data = path, where, data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(
        self,
        name: str,
        kind: type[T],
        default: T | None = None,
        *,
        check: Callable[[T], str | None] | None = None,
    ) -> T:
        self._seen.add(name)
        if name not in self.data:
            if default is None:
                raise ProfileError(self.path, self.key(name), "is required")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProfileError(
                self.path,
                self.key(name),
                f"expected {kind.__name__}, got {type(value).__name__} {value!r}",
            )
        if check is not None and (problem := check(value)) is not None:
            raise ProfileError(self.path, self.key(name), problem)
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        values = self.get(name, list, list(default))
        if not all(isinstance(v, str) for v in values):
            raise ProfileError(self.path, self.key(name), "expected a list of strings")
        return tuple(values)

    def table(self, name: str) -> _Table:
        self._seen.add(name)
        return _Table(self.path, self.key(name), self.data.get(name, {}))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise ProfileError(self.path, self.key(unknown[0]), "unknown key")


def _admission(channels: _Table) -> AdmissionLimits:
    """The bounds on channel offers not yet funded (`mesh.channel.admission`)."""
    d = AdmissionLimits()
    per_peer = channels.get("max_unfunded_per_peer", int, d.per_peer, check=_positive)
    total = channels.get("max_unfunded", int, d.total, check=_positive)
    lifetime = channels.get("unfunded_lifetime", float, d.lifetime, check=_positive)
    strikes = channels.get("strikes", int, d.max_strikes, check=_positive)
    backoff = channels.get("set_aside", float, d.backoff, check=_positive)
    return AdmissionLimits(per_peer, total, lifetime, strikes, backoff, max(backoff, d.max_backoff))


def _retention(section: _Table) -> RetentionSpec:
    """How long anchored records, settled channels and spent coins stay in the stores
    (`mesh.anchoring.retention`); records past it go to ``DATA_DIR/archive``."""
    d = RetentionSpec()
    streams = section.table("streams")
    per_stream = {
        name: Keep(streams.get(name, float, check=_non_negative)) for name in streams.data
    }
    online_mb = section.get("online_mb", float, 0.0, check=_non_negative)
    records = RetentionPolicy(
        default=Keep(section.get("days", float, 30.0, check=_non_negative)),
        streams=per_stream,
        online_mb=online_mb or None,
        archive=section.get("archive", bool, True),
    )
    spec = RetentionSpec(
        records=records,
        channels_days=section.get("channels_days", float, d.channels_days, check=_non_negative),
        wallet_days=section.get("wallet_days", float, d.wallet_days, check=_non_negative),
        interval=section.get("interval", float, d.interval, check=_positive),
    )
    streams.done()
    return spec


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _mailbox(value: str) -> str | None:
    return None if value.startswith(("tcp://", "ipc://")) else "must be a tcp:// or ipc:// URL"


def _kind(value: str) -> str | None:
    return None if value in KINDS else f"must be one of {', '.join(KINDS)}"


def _service(path: Path, where: str, data: object) -> ServiceSpec:
    t = _Table(path, where, data)
    spec = ServiceSpec(
        id=t.get(
            "id",
            str,
            check=lambda v: (
                None
                if v and "," not in v and "=" not in v
                else "must be non-empty without ',' or '='"
            ),
        ),
        kind=t.get("kind", str, check=_kind),
        unit=t.get("unit", str),
        price=t.get("price", int, check=_positive),
        tick=t.get("tick", float, 1.0, check=_positive),
        credit=t.get("credit", int, 1, check=_non_negative),
        handler=t.get("handler", str),
        buyers=t.strings("buyers", ("*",)),
        description=t.get("description", str, ""),
    )
    for buyer in spec.buyers:
        if buyer != "*":
            try:
                parse_peer_id(buyer)
            except ValueError as exc:
                raise ProfileError(path, f"{where}.buyers", str(exc)) from None
    t.done()
    return spec


def _want(path: Path, where: str, data: object) -> WantSpec:
    t = _Table(path, where, data)
    want = WantSpec(
        service=t.get("service", str),
        max_price=t.get("max_price", int, check=_positive),
        units=t.get("units", int, check=_positive),
        budget=t.get("budget", int, check=_positive),
        prepay=t.get("prepay", int, 1, check=_non_negative),
        kind=t.get("kind", str, check=_kind),
        tick=t.get("tick", float, 1.0, check=_positive),
        request=t.get("request", str, ""),
        deadline=t.get("deadline", float, 0.0, check=_non_negative),
    )
    t.done()
    return want


def load_profile(path: Path, *, data_dir: Path | None = None) -> Profile:
    """Read and validate a profile. With `data_dir`, also check the key file exists."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(path, "(file)", "no such profile") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(
            path, "(file)", f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(path, "(syntax)", str(exc)) from None
    top = _Table(path, "", raw)
    agent = top.table("agent")
    discovery = top.table("discovery")
    channels = top.table("channels")
    anchoring = top.table("anchoring")
    kept = top.table("retention")
    retention = _retention(kept)
    services = [
        _service(path, f"services[{i}]", item)
        for i, item in enumerate(top.get("services", list, []))
    ]
    wants = [_want(path, f"wants[{i}]", item) for i, item in enumerate(top.get("wants", list, []))]
    ids = [s.id for s in services]
    for i, sid in enumerate(ids):
        if sid in ids[:i]:
            raise ProfileError(path, f"services[{i}].id", f"duplicate service id {sid!r}")
    profile = Profile(
        path=path,
        name=agent.get("name", str),
        site=agent.get("site", str, DEFAULT_SITE, check=site_problem),
        vendor=agent.get("vendor", str, ""),
        key_file=agent.get("key_file", str, "identity.key"),
        passphrase_env=agent.get("passphrase_env", str, "") or None,
        mailbox=agent.get("mailbox", str, "tcp://127.0.0.1:0", check=_mailbox),
        heartbeat=agent.get("heartbeat", float, 2.0, check=_positive),
        dead_after=agent.get("dead_after", float, 8.0, check=_positive),
        interfaces=discovery.strings("interfaces", ("127.0.0.1",)),
        static_peers=discovery.strings("static_peers"),
        discovery_ttl=discovery.get("ttl", int, 120, check=_positive),
        capacity=channels.get("capacity", int, 100_000, check=_positive),
        lifetime_blocks=channels.get("lifetime_blocks", int, 144, check=_positive),
        window=channels.get("window", int, 64, check=_positive),
        admission=_admission(channels),
        anchor_every=anchoring.get("batch", int, 1000, check=_positive),
        anchor_seconds=anchoring.get("seconds", float, 10.0, check=_positive),
        receipt_interval=anchoring.get("receipts", float, 2.0, check=_positive),
        services=tuple(services),
        wants=tuple(wants),
        retention=retention,
    )
    for section in (agent, discovery, channels, anchoring, kept, top):
        section.done()
    for i, peer in enumerate(profile.static_peers):
        try:
            parse_static(peer)
        except ValueError as exc:
            raise ProfileError(path, f"discovery.static_peers[{i}]", str(exc)) from None
    if data_dir is not None:
        key = data_dir / profile.key_file
        if not key.exists():
            raise ProfileError(path, "agent.key_file", f"{key} does not exist (run `mesh keygen`)")
    return profile

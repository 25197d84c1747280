"""Vendor profiles: what an agent is, sells and buys, loaded from TOML and checked.

A profile is the only file a vendor writes. Every mistake -- an unknown key, a
wrong type, a negative price, a missing key file, a name peers could not display, an
interface this host does not have, a handler no installed package declares -- is a
`ProfileError` whose message names the file, the key (as a dotted path such as
``services[1].price``) and the problem; a misspelt key is named with the key it was
probably meant to be. `profiles/README.md` documents every key by example.
(docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ifaddr

from agents.partners import IDLE_CLOSE
from agents.profile_bridges import (
    SOURCES,
    SURFACES,
    BridgeError,
    SourceSpec,
    Surfaces,
    service_source,
    surfaces,
)
from agents.profile_certs import CertsConfigError, check_uses, held_certificates, requirements
from agents.profile_workflows import (
    EscrowSpec,
    InspectionSpec,
    WorkflowsConfigError,
    WorkflowSpec,
    escrow,
    inspection,
    workflows,
)
from agents.web.config import DEFAULT_LISTEN, DashboardConfig, dashboard_config
from mesh.anchoring.retention import Keep, RetentionPolicy
from mesh.certs.policy import Held, Requirement
from mesh.channel.admission import AdmissionLimits
from mesh.discovery.table import parse_static
from mesh.errors import MeshError
from mesh.identity import parse_peer_id
from mesh.session import DEFAULT_SITE, site_problem

KINDS = ("tool-time", "data-feed", "call")

MAX_NAME_BYTES = 63
"""Longest agent name (UTF-8 bytes). Peers see it in the mDNS TXT ``name=`` string (at
most 250 bytes there, sharing a 1 300-byte record with the service list) and in the
handshake; the mDNS instance label is derived from the peer id, not from the name. 63
bytes, a DNS label's size, is plenty for a human name and leaves the record room."""

_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Characters that reorder the text around them (Trojan-source style): a name holding
one reads differently in `mesh status` than what it is."""

# The keys of the tables that have required keys: a key outside these, next to a
# missing required one, is most likely that key misspelt (`prcie = 5`).
AGENT_KEYS = (
    "name",
    "site",
    "vendor",
    "key_file",
    "passphrase_env",
    "mailbox",
    "heartbeat",
    "dead_after",
)
SERVICE_KEYS = (
    "id",
    "kind",
    "unit",
    "price",
    "tick",
    "credit",
    "handler",
    "buyers",
    "description",
    "require",
    *SOURCES,
)
WANT_KEYS = (
    "service",
    "max_price",
    "units",
    "budget",
    "prepay",
    "kind",
    "tick",
    "request",
    "deadline",
    "require",
)

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
    source: SourceSpec | None = None
    """Where a bridged feed's readings come from (then `handler` is empty)."""
    require: str = ""
    """A requirement (`Profile.requirements`) a buyer must prove before it may open
    a channel for this service ("": none)."""

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
    require: str = ""
    """A requirement (`Profile.requirements`) a provider must prove before we buy."""
    order_prefix: bytes = b""
    """The first bytes of every order's id (a work order's tag: `mesh.workflow.orders`)."""

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
    idle_close: float
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
    surfaces: Surfaces = field(default_factory=Surfaces)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    """The OPC UA server and Sparkplug publisher the agent runs, if any."""
    certificates: tuple[Held, ...] = ()
    """Certificates issued to this agent, and what it discloses of each."""
    requirements: Mapping[str, Requirement] = field(default_factory=dict)
    """What peers must prove, by name (`agents.profile_certs`)."""
    workflows: tuple[WorkflowSpec, ...] = ()
    """Escrowed work orders this agent places, as a buyer (`agents.profile_workflows`)."""
    escrow: EscrowSpec | None = None
    """The inspectors this machine takes work orders with (None: it takes none)."""
    inspection: InspectionSpec | None = None
    """How this agent inspects parts (None: it is no inspector)."""
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

    def __init__(self, path: Path, where: str, data: object, keys: tuple[str, ...] = ()) -> None:
        if not isinstance(data, dict):
            raise ProfileError(path, where or "(top level)", "expected a table")
        self.path, self.where, self.data = path, where, data
        self.keys = keys
        """Every key the table may hold (given where a key is required)."""
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
        if self.keys and name not in self.keys:  # our bug: the key list must name it
            raise TypeError(f"{self.key(name)} is read but missing from the table's keys")
        self._seen.add(name)
        if name not in self.data:
            if default is None:
                self._misspelt(name)
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

    def table(self, name: str, keys: tuple[str, ...] = ()) -> _Table:
        self._seen.add(name)
        return _Table(self.path, self.key(name), self.data.get(name, {}), keys)

    def _misspelt(self, name: str) -> None:
        """Before saying `name` is required: name an unknown key that looks like it."""
        unknown = [str(k) for k in self.data if k not in self.keys and k not in self._seen]
        close = difflib.get_close_matches(name, unknown, n=1)
        if close:
            raise ProfileError(
                self.path, self.key(close[0]), f"unknown key (did you mean {name!r}?)"
            )

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(self._seen), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProfileError(self.path, self.key(unknown[0]), f"unknown key{hint}")


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
    if not value.startswith(("tcp://", "ipc://")):
        return "must be a tcp:// or ipc:// URL"
    if value.startswith("ipc://"):
        return None if len(value) > len("ipc://") else "ipc:// needs a socket path"
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as exc:  # a port out of range or not a number
        return f"{value!r} is not a valid tcp:// URL ({exc})"
    host = url.hostname or ""
    if port is None or not host:
        return f"{value!r} must be tcp://HOST:PORT (port 0 = any free port)"
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} in {value!r} is not an IPv4 address"
    return None


def _name(value: str) -> str | None:
    """Why `value` cannot be an agent's name (None: it can)."""
    size = len(value.encode())
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; at most {MAX_NAME_BYTES} (UTF-8)"
    for i, c in enumerate(value):
        if c in _BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp"):
            what = "a bidi control" if c in _BIDI_CONTROLS else "a control character"
            return (
                f"contains {what} (U+{ord(c):04X} at position {i}); peers must be able to show it"
            )
    return None


def _host_addresses() -> dict[str, tuple[str, ...]]:
    """This host's network interfaces and their IPv4 addresses, by interface name."""
    return {
        adapter.name: tuple(ip.ip for ip in adapter.ips if isinstance(ip.ip, str))
        for adapter in ifaddr.get_adapters()
    }


def _interfaces(path: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """Resolve `discovery.interfaces` -- IPv4 addresses of this host or interface names
    (``"lo"``, ``"eth0"``: all their IPv4 addresses) -- to addresses for mDNS."""
    if not names:
        raise ProfileError(
            path, "discovery.interfaces", "must name an interface or address, e.g. ['127.0.0.1']"
        )
    host = _host_addresses()
    ours = {address for addresses in host.values() for address in addresses}
    resolved: list[str] = []
    for i, text in enumerate(names):
        key = f"discovery.interfaces[{i}]"
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            if text not in host:
                known = ", ".join(sorted(host)) or "none"
                raise ProfileError(
                    path,
                    key,
                    f"{text!r} is neither an IPv4 address nor an interface of "
                    f"this host (interfaces: {known})",
                ) from None
            if not host[text]:
                raise ProfileError(path, key, f"interface {text!r} has no IPv4 address") from None
            resolved += host[text]
            continue
        if str(address) not in ours:
            mine = ", ".join(sorted(ours)) or "none"
            raise ProfileError(
                path, key, f"{text} is not an address of this host (its addresses: {mine})"
            )
        resolved.append(str(address))
    return tuple(dict.fromkeys(resolved))


def _kind(value: str) -> str | None:
    return None if value in KINDS else f"must be one of {', '.join(KINDS)}"


def _service(path: Path, where: str, data: object) -> ServiceSpec:
    t = _Table(path, where, data, SERVICE_KEYS)
    kind = t.get("kind", str, check=_kind)
    try:
        source = service_source(where, t.data, kind, path.parent)
    except BridgeError as exc:
        raise ProfileError(path, exc.key, exc.problem) from None
    if source is not None:
        t.get(source.kind, dict)  # read: checked by the bridge
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
        kind=kind,
        unit=t.get("unit", str),
        price=t.get("price", int, check=_positive),
        tick=t.get("tick", float, 1.0, check=_positive),
        credit=t.get("credit", int, 1, check=_non_negative),
        handler="" if source is not None else t.get("handler", str),
        buyers=t.strings("buyers", ("*",)),
        description=t.get("description", str, ""),
        source=source,
        require=t.get("require", str, ""),
    )
    for buyer in spec.buyers:
        if buyer != "*":
            try:
                parse_peer_id(buyer)
            except ValueError as exc:
                raise ProfileError(path, f"{where}.buyers", str(exc)) from None
    t.done()
    if source is None:
        _check_handler(path, f"{where}.handler", spec)
    return spec


def _check_handler(path: Path, key: str, spec: ServiceSpec) -> None:
    """Resolve the service's handler now, so that a name no installed package declares,
    or a handler of another kind, stops the profile at load time (the naming rule:
    `agents.services.vendor`). The agent resolves it again when it starts."""
    # Imported here: agents.services imports this module (ServiceSpec, WantSpec).
    from agents.services.vendor import HandlerError, resolve

    try:
        resolve(spec.handler, spec.kind)
    except HandlerError as exc:
        raise ProfileError(path, key, str(exc)) from None


def _want(path: Path, where: str, data: object) -> WantSpec:
    t = _Table(path, where, data, WANT_KEYS)
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
        require=t.get("require", str, ""),
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
    agent = top.table("agent", AGENT_KEYS)
    discovery = top.table("discovery")
    channels = top.table("channels")
    anchoring = top.table("anchoring")
    kept = top.table("retention")
    web = top.table("dashboard")
    try:
        dashboard = dashboard_config(
            web.get("listen", str, DEFAULT_LISTEN), web.get("token_file", str, ""), path.parent
        )
    except ValueError as exc:
        where, _, problem = str(exc).partition(": ")
        raise ProfileError(path, where, problem) from None
    retention = _retention(kept)
    try:
        shown = surfaces(raw, path.parent)
    except BridgeError as exc:
        raise ProfileError(path, exc.key, exc.problem) from None
    for name in SURFACES:
        if name in raw:
            top.table(name)  # read: checked by the bridge
    services = [
        _service(path, f"services[{i}]", item)
        for i, item in enumerate(top.get("services", list, []))
    ]
    wants = [_want(path, f"wants[{i}]", item) for i, item in enumerate(top.get("wants", list, []))]
    try:
        held = held_certificates(top.get("certificates", list, []), path.parent)
        required = requirements(top.get("requirements", dict, {}))
        for i, spec in enumerate(services):
            check_uses(f"services[{i}].require", spec.require, required)
        for i, want in enumerate(wants):
            check_uses(f"wants[{i}].require", want.require, required)
        orders = workflows(top.get("workflows", list, []), required)
        machine = escrow(top.get("escrow", dict, {}) if "escrow" in raw else None)
        inspector = inspection(top.get("inspection", dict, {}) if "inspection" in raw else None)
    except (CertsConfigError, WorkflowsConfigError) as exc:
        raise ProfileError(path, exc.key, exc.problem) from None
    ids = [s.id for s in services]
    for i, sid in enumerate(ids):
        if sid in ids[:i]:
            raise ProfileError(path, f"services[{i}].id", f"duplicate service id {sid!r}")
    profile = Profile(
        path=path,
        name=agent.get("name", str, check=_name),
        site=agent.get("site", str, DEFAULT_SITE, check=site_problem),
        vendor=agent.get("vendor", str, ""),
        key_file=agent.get("key_file", str, "identity.key"),
        passphrase_env=agent.get("passphrase_env", str, "") or None,
        mailbox=agent.get("mailbox", str, "tcp://127.0.0.1:0", check=_mailbox),
        heartbeat=agent.get("heartbeat", float, 2.0, check=_positive),
        dead_after=agent.get("dead_after", float, 8.0, check=_positive),
        interfaces=_interfaces(path, discovery.strings("interfaces", ("127.0.0.1",))),
        static_peers=discovery.strings("static_peers"),
        discovery_ttl=discovery.get("ttl", int, 120, check=_positive),
        idle_close=discovery.get("idle_close", float, IDLE_CLOSE, check=_positive),
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
        surfaces=shown,
        dashboard=dashboard,
        certificates=held,
        requirements=required,
        workflows=orders,
        escrow=machine,
        inspection=inspector,
    )
    for section in (agent, discovery, channels, anchoring, kept, web, top):
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

"""Where the dashboard listens and who may read it: the profile's ``[dashboard]`` table
and `mesh run --dashboard`.

    [dashboard]
    listen = "127.0.0.1:8470"   # default 127.0.0.1:0 (a free port, shown by `mesh status`)
    token_file = "dashboard.token"  # required when listen is not a loopback address

Read-only either way. On loopback only local users reach it; any other address needs a
token (at least 16 characters, in a file beside the profile or at an absolute path),
which every request must carry as ``?token=`` or ``Authorization: Bearer``.
``listen = "off"`` serves nothing. (docs/ARCHITECTURE.md §6.2, §10)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:0"
MIN_TOKEN = 16


@dataclass(frozen=True)
class DashboardConfig:
    """The dashboard's address (None: off) and token (None: no token asked)."""

    host: str | None = "127.0.0.1"
    port: int = 0
    token: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the agent serves a dashboard."""
        return self.host is not None


def parse_listen(text: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) or ``off``; ValueError says what is wrong."""
    if text.strip().lower() == "off":
        return None, 0
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8470) or off")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`."""
    return ipaddress.ip_address(host).is_loopback


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped); ValueError if unusable."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise ValueError(f"{path}: a token is one word of at least {MIN_TOKEN} characters")
    return token


def dashboard_config(listen: str, token_file: str, base: Path) -> DashboardConfig:
    """The ``[dashboard]`` table's values (`base`: where a relative token file lies).

    ValueError ``"KEY: PROBLEM"`` for a bad address, an unreadable token or a
    non-loopback address without one."""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ValueError(f"dashboard.listen: {exc}") from None
    token = None
    if token_file:
        try:
            token = read_token(base / token_file)
        except ValueError as exc:
            raise ValueError(f"dashboard.token_file: {exc}") from None
    config = DashboardConfig(host, port, token)
    problem = exposure_problem(config)
    if problem:
        raise ValueError(f"dashboard.listen: {problem}")
    return config


def exposure_problem(config: DashboardConfig) -> str | None:
    """Why `config` must not be served, or None: beyond loopback only with a token."""
    if config.host is not None and not is_loopback(config.host) and config.token is None:
        return (
            f"{config.host} is reachable from other machines: set dashboard.token_file"
            " (the dashboard shows the agent's peers, channels and money)"
        )
    return None

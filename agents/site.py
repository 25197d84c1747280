"""`mesh up PROFILE…`: run agent profiles as one local site, end to end.

Creates a data dir with a fresh LocalLedger, gives each agent a new identity key and
a copy of its profile under one site (`--site`, or a fresh random `up-<8 hex>`, so
sites side by side on one host or LAN never see each other), funds every agent from
the faucet (a buyer `--funds` sat, one coin per want and one more; any other agent
`FLOAT` sat for its anchoring fees), mines a block every 2 s, and starts each agent as
its own `mesh run` process in its own process group (so a Ctrl-C reaches this runner
only, and it decides the order of shutdown). The agents find each other by mDNS on
loopback and trade while a live view shows them (agents/site_view.py). At the end --
every want done, `--seconds` up, an agent gone, or Ctrl-C -- the buyers stop first
(providers finish what is paid), then the providers; every channel closes, a block is
mined and the run is reconciled against the ledger: exit 0 only when every want is
done and every channel matches its meter and the ledger.

Every profile is validated, and the site's names checked, before anything starts. It
must never change a user's profile (the site goes into each agent's own copy) nor put
anything outside the data dir. The command line (options, `cmd_up`) is `agents.site_cli`.
(docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agents.control import ControlError, request
from agents.profile import Profile, ProfileError, load_profile
from agents.site_view import (
    Out,
    Roster,
    Statuses,
    live_lines,
    print_summary,
    progress_line,
    reconcile,
)
from agents.site_work import parts_open
from agents.web.site_server import SiteServer
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.errors import MeshError
from mesh.identity import Identity, load_identity, save_identity
from mesh.store import Store

SECONDS = 30.0  # the longest run, unless told
FUNDS = 1_000_000  # each buying agent's coins, unless told
FLOAT = 5_000  # each other agent's coins, for anchoring fees
BLOCK_SECONDS = 2.0  # a block this often while the site runs
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # they end a run as Ctrl-C does


class SiteError(MeshError):
    """A site that cannot be set up as asked (printed as one line)."""


def new_site(prefix: str = "up") -> str:
    """A fresh random site id for one run: its agents see no other run's."""
    return f"{prefix}-{secrets.token_hex(4)}"


_AGENT_HEADER = re.compile(r"\s*\[\s*agent\s*\]\s*(#.*)?")
_TABLE_HEADER = re.compile(r"\s*\[")
_SITE_KEY = re.compile(r"\s*site\s*=")


def with_site(path: Path, text: str, site: str) -> str:
    """The profile `text` (read from `path`) with `[agent] site` set to `site`: the
    line after the `[agent]` header, or in place of the site it had."""
    lines = text.splitlines(keepends=True)
    # json.dumps quotes printable ASCII exactly as a TOML basic string does.
    setting = f"site = {json.dumps(site)}\n"
    for i, line in enumerate(lines):
        if _AGENT_HEADER.fullmatch(line.rstrip("\r\n")):
            end = next(
                (j for j in range(i + 1, len(lines)) if _TABLE_HEADER.match(lines[j])), len(lines)
            )
            had = next((j for j in range(i + 1, end) if _SITE_KEY.match(lines[j])), None)
            if had is None:
                lines.insert(i + 1, setting)
            else:
                lines[had] = setting
            return "".join(lines)
    raise ProfileError(path, "agent", "needs an [agent] table header to set the site in")


@dataclass(frozen=True)
class SiteAgent:
    """One agent of a site: its name there (its profile's file name) and its profile."""

    name: str
    profile: Profile

    @property
    def source(self) -> Path:
        """The profile file it was given as (never written)."""
        return self.profile.path


def load_agents(paths: list[Path]) -> tuple[SiteAgent, ...]:
    """Validate every profile and the names of the site they make, before anything
    starts; the first problem is a `ProfileError` naming its file, or a `SiteError`."""
    agents = tuple(SiteAgent(path.stem, _checked(path)) for path in paths)
    seen: dict[str, SiteAgent] = {}
    for agent in agents:
        twin = seen.get(agent.name)
        if twin is not None:
            raise SiteError(
                f"{twin.source} and {agent.source}: two profiles named {agent.name}.toml"
                " (each agent's data dir is named after its profile's file)"
            )
        twin = next((a for a in seen.values() if a.profile.name == agent.profile.name), None)
        if twin is not None:
            raise SiteError(
                f"{twin.source} and {agent.source} both name their agent"
                f" {agent.profile.name!r}: the agents of a site need different names"
            )
        seen[agent.name] = agent
    return agents


def _checked(path: Path) -> Profile:
    """The profile at `path`, valid and fit to run on a site of new keys."""
    profile = load_profile(path)
    key = Path(profile.key_file)
    if key.is_absolute() or ".." in key.parts:
        raise ProfileError(
            path, "agent.key_file", "must be inside the data dir (the site makes each agent a key)"
        )
    var = profile.passphrase_env
    if var is not None and not os.environ.get(var):
        raise ProfileError(
            path, "agent.passphrase_env", f"{var} is not set (it seals the agent's new key)"
        )
    return profile


def coins(profile: Profile, funds: int) -> list[int]:
    """The coins an agent starts with. A buyer: `funds` in one coin per want and one
    more, so each channel it opens at once has its own coin (none waits for change)
    and anchoring fees another; any other agent: `FLOAT` for its anchoring fees."""
    if not profile.wants:
        return [FLOAT]
    n = len(profile.wants) + 1
    return [c for i in range(n) if (c := funds // n + (i < funds % n)) > 0]


class Site:
    """A site's processes and files: one data dir per agent under `root`, the ledger
    beside them, one `mesh run` process per agent."""

    def __init__(
        self,
        root: Path,
        agents: tuple[SiteAgent, ...],
        site: str,
        log_level: str,
        funds: int = FUNDS,
        log_format: str = "plain",
    ) -> None:
        self.root = root
        self.agents = agents
        self.site = site
        self.log_level, self.log_format = log_level, log_format
        self.funds = funds
        self.ledger = root / "ledger.db"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def profile(self, name: str) -> Path:
        """The agent's own copy of its profile, under the site."""
        return self.root / name / "profile.toml"

    def log(self, name: str) -> Path:
        """What the agent's process wrote."""
        return self.root / name / "agent.log"

    def prepare(self) -> Roster:
        """Profiles, ledger, keys and coins; who is on the site."""
        LocalLedger.create(self.ledger).close()
        ids: dict[str, str] = {}
        funded: dict[str, int] = {}
        for agent in self.agents:
            source = agent.source
            copy = self.profile(agent.name)
            copy.parent.mkdir(parents=True)
            copy.write_text(with_site(source, source.read_text(), self.site))
            if load_profile(copy).site != self.site:
                raise ProfileError(source, "agent.site", "could not be set in the site's copy")
            identity = Identity.generate()
            save_identity(identity, self._key(agent), self._passphrase(agent))
            ids[agent.name] = identity.peer_id
        with LocalLedger.open(self.ledger) as ledger:
            for agent in self.agents:
                with Store(self.root / agent.name / "agent.db") as store:
                    key = load_identity(self._key(agent), self._passphrase(agent))
                    script = p2pkh_script(Wallet(store, key).new_address())
                given = coins(agent.profile, self.funds)
                for amount in given:
                    ledger.faucet(script, amount)
                funded[agent.name] = sum(given)
            ledger.mine()
        return Roster(
            site=self.site,
            root=self.root,
            ledger=self.ledger,
            names=tuple(agent.name for agent in self.agents),
            ids=ids,
            wanted={agent.name: agent.profile.wants for agent in self.agents},
            funded=funded,
        )

    def _key(self, agent: SiteAgent) -> Path:
        return self.root / agent.name / agent.profile.key_file

    def _passphrase(self, agent: SiteAgent) -> bytes | None:
        var = agent.profile.passphrase_env
        return os.environ[var].encode() if var is not None else None

    def start(self) -> None:
        """One `mesh run` process per agent, in the order given."""
        for agent in self.agents:
            name = agent.name
            log = open(self.log(name), "wb")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents.cli",
                    "--log-level",
                    self.log_level,
                    "--log-format",
                    self.log_format,
                    "run",
                    str(self.profile(name)),
                    "--data-dir",
                    str(self.root / name),
                    "--ledger",
                    str(self.ledger),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # a Ctrl-C is ours: the agents stop in our order
            )
            log.close()

    def status(self, name: str) -> dict[str, Any] | None:
        """An agent's status, or None while it is starting (or gone)."""
        try:
            return request(self.root / name / "control.sock", {"cmd": "status"}, timeout=5)
        except (ControlError, OSError, ValueError):
            return None

    def exited(self) -> dict[str, int]:
        """The agents whose process ended, with its exit code."""
        return {
            name: code for name, proc in self.procs.items() if (code := proc.poll()) is not None
        }

    def stop(self, name: str, timeout: float = 12.0) -> int | None:
        """SIGTERM one agent and wait for it."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    @contextmanager
    def mining(self, interval: float = 0.3) -> Iterator[None]:
        """Mine a block every `interval` seconds while the block runs."""
        done = threading.Event()

        def miner() -> None:
            with LocalLedger.open(self.ledger) as ledger:
                while not done.wait(interval):
                    ledger.mine()

        thread = threading.Thread(target=miner, name="site-miner", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def kill_all(self) -> None:
        """Make sure nothing is left running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class RunOptions:
    """How one run goes: `mesh up`'s and `mesh demo`'s options."""

    seconds: float = SECONDS
    keep: bool = False
    as_json: bool = False
    data_dir: Path | None = None
    log_level: str = "warning"
    log_format: str = "plain"
    site: str | None = None
    funds: int = FUNDS
    label: str = "up"
    """What the run is called: the live view's title, the site's and data dir's prefix."""
    note: str = ""
    """Said after the number of agents at the start, e.g. who was left out."""
    report: Callable[[Roster, Statuses], list[str]] | None = None
    """Lines to add to the end, made once the agents stopped (their data dirs still
    there; their last statuses given): `mesh demo`'s plant path and certificates."""
    before_start: Callable[[Roster], None] | None = None
    """Called once the agents have keys and coins, before any starts: `mesh demo`
    issues the sensor's certificate there."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: the agents, in their own process
    group, hear none of them and would be left running."""
    before = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def run_site(agents: tuple[SiteAgent, ...], options: RunOptions) -> int:
    """Run `agents` as one site until every want is done, `options.seconds` are up, an
    agent exits or Ctrl-C, then settle and reconcile; returns the exit code."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    root = _data_dir(options)
    keep = options.keep or options.data_dir is not None
    name = options.site or new_site(options.label)
    site = Site(root, agents, name, options.log_level, options.funds, options.log_format)
    out = Out(sys.stderr if options.as_json else sys.stdout)
    try:
        with _stop_signals():
            try:
                summary = _run_and_reconcile(site, options, out)
            finally:
                site.kill_all()
    except BaseException:  # a second Ctrl-C, or the site could not be set up
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if options.as_json:
        print(json.dumps(summary, indent=1))
        for line in summary["unmet"]:
            out.line(f"UNMET: {line}")
        for line in summary["mismatches"]:
            out.line(f"MISMATCH: {line}")
    else:
        print_summary(summary, out)
    for line in summary["report"]:
        out.line(line)
    exited = summary["exited"]
    for agent, code in exited.items():
        out.line(f"{agent} exited with {code} while the site ran; its log: {site.log(agent)}")
    if keep or exited:
        out.line(f"kept the data dir: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if summary["reconciled"] and not exited else 1


def _data_dir(options: RunOptions) -> Path:
    """The run's data dir: `--data-dir` if new or empty, else a temporary one."""
    if options.data_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"m2mesh-{options.label}-"))
    root = options.data_dir
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SiteError(f"--data-dir {root}: must be a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run_and_reconcile(site: Site, options: RunOptions, out: Out) -> dict[str, Any]:
    """Set the site up, run it, settle it; the reconciled summary."""
    roster = site.prepare()
    if options.before_start is not None:
        options.before_start(roster)
    out.line(f"data dir {site.root}")
    out.line(f"site {site.site}; starting {len(site.agents)} agents{options.note}…")
    out.line(_funding(site.agents, roster))
    statuses, exited = _run(site, roster, options, out)
    out.line("stopping: the buyers settle, then every channel closes…")
    met = {
        name: sorted(p["peer_id"] for p in (st or {}).get("peers", []))
        for name, st in statuses.items()
    }
    summary = reconcile(roster, _settle(site, roster, statuses))
    report = options.report
    summary["report"] = report(roster, statuses) if report is not None else []
    for agent in summary["agents"]:
        agent["met"] = met.get(agent["name"], [])
        proc = site.procs.get(agent["name"])
        agent["exit_code"] = proc.returncode if proc is not None else None
    summary["exited"] = exited
    return summary


def _funding(agents: tuple[SiteAgent, ...], roster: Roster) -> str:
    """Who was given how much, in one line."""
    buyers = [a.name for a in agents if a.profile.wants]
    given = ", ".join(f"{name} {roster.funded[name]}" for name in buyers) or "no buyer"
    others = len(agents) - len(buyers)
    rest = f"; {others} other(s) {FLOAT} each, for anchoring fees" if others else ""
    return f"funds (sat): {given}{rest}"


def _run(
    site: Site, roster: Roster, options: RunOptions, out: Out
) -> tuple[dict[str, dict[str, Any] | None], dict[str, int]]:
    """Start the agents and watch them until the run ends; their last statuses, and
    the agents that exited meanwhile. Ctrl-C ends the run early, nothing more."""
    statuses: dict[str, dict[str, Any] | None] = {}
    exited: dict[str, int] = {}
    started = time.monotonic()
    last_print = 0.0
    view = SiteServer(site.site, roster.names, site.status)
    url = view.start()
    shown = f"site view: {url}" if url else f"no site view ({view.error})"
    out.line(shown)
    try:
        site.start()
        with site.mining(BLOCK_SECONDS):  # anchors and channels confirm as they go
            while time.monotonic() < started + options.seconds:
                exited = site.exited()
                if exited:
                    break
                statuses = {name: site.status(name) for name in roster.names}
                wants = roster.wants(statuses)
                if wants and all(w["state"] == "done" for w in wants) and not parts_open(statuses):
                    break
                now = time.monotonic()
                if out.tty:
                    lines = live_lines(options.label, roster, statuses, started)
                    out.screen([*lines[:1], shown, *lines[1:]])
                elif now - last_print >= 2.0:
                    out.line(progress_line(roster, statuses, started))
                    last_print = now
                time.sleep(0.5)
    except KeyboardInterrupt:
        out.line("interrupted: stopping (Ctrl-C again kills the agents)…")
    finally:
        view.stop()
    for name, code in exited.items():
        tail = site.log(name).read_text(errors="replace").strip().splitlines()[-5:]
        out.line(f"{name} exited with {code}; the end of its log:")
        for line in tail:
            out.line(f"  {line}")
    return statuses, exited


def _settle(site: Site, roster: Roster, statuses: Statuses) -> Statuses:
    """Stop the buyers, then the providers once every buyer settled; each agent's last
    word (a buyer's as it stops buying, a provider's meters after)."""
    buyers = [name for name in roster.names if roster.wanted[name]]
    final: dict[str, dict[str, Any] | None] = {}
    with site.mining():  # anchors broadcast at shutdown get mined meanwhile
        for name in buyers:
            final[name] = site.status(name) or statuses.get(name)
            site.stop(name)
        for name in roster.names:
            if name not in buyers:
                final[name] = site.status(name)
        for name in roster.names:
            if name not in buyers:
                site.stop(name)
    return final

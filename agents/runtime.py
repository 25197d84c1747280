"""The agent: one Trio nursery that wires discovery, sessions, channels and services.

`Agent.run` opens the agent's store, wallet and chain, its node (mailbox), its
discovery, the channel manager and the services of its profile, then:

* keeps the table of every discovered peer but holds sessions only with its trading
  partners (`agents.sessions`): the cheapest providers of what it buys, static peers
  (pinning the announced id), and any peer a frame is for; idle ones it dialled close;
* dispatches frames: channel frames to the manager, orders to the provider,
  deliveries to the buyer, receipt requests and receipts to the receipt exchange;
* buys what the profile wants from the cheapest provider within its price limit;
* freezes a peer's meters the moment its session is lost (heartbeats run in the
  node), and thaws them when it is back;
* serves `mesh status` on a control socket in the data dir.

`request_stop()` (SIGINT/SIGTERM in `mesh run`) shuts down in order: stop buying
(providers finish what is paid), close every channel cooperatively, anchor what was
logged and (for a few seconds) collect receipts for bought readings, then leave the
nursery, which sends mDNS goodbyes and closes the sockets -- within 10 s.
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agents.agent_status import agent_status
from agents.bridges import Bridges
from agents.buy_command import buy
from agents.buying import RECENT_ORDERS, Purchases, WantProgress
from agents.chain_choice import DEFAULT_CHAIN, open_chain
from agents.channels import ChannelConfig, ChannelFailure, ChannelManager
from agents.commands import close_channel
from agents.control import serve_control
from agents.logs import log_context
from agents.partners import SessionPlan, Wanted
from agents.profile import Profile, ProfileError, WantSpec
from agents.profile_certs import CertsConfigError, check_subject
from agents.proofs import Proofs
from agents.receipts import Archive, ReceiptExchange
from agents.services.buyer import Buyer
from agents.services.orders import Provider
from agents.services.standing import SellerStanding
from agents.services.vendor import Handler, HandlerError, resolve
from agents.sessions import SessionKeeper
from agents.upkeep import keep_retention, keep_wallet_synced, sync_wallet
from agents.web.app import agent_app
from agents.web.config import DashboardConfig
from agents.web.lag import LagMonitor
from agents.web.records import RecordsView
from agents.web.server import serve_app
from agents.workflows import WorkContext, Workflows, WorkOrderStore
from agents.workflows.inspector import InspectionError, resolve_measure
from mesh.anchoring import (
    AnchorConfig,
    Anchorer,
    AnchoringError,
    BatchPolicy,
)
from mesh.anchoring.record import SignedRecord
from mesh.certs.certificate import Certificate
from mesh.chain.base import AgentChain
from mesh.chain.errors import ChainError
from mesh.chain.wallet import Wallet
from mesh.channel.state import Role, State
from mesh.channel.store import ChannelStore
from mesh.discovery import Discovery, PeerTable, open_discovery, parse_static
from mesh.errors import MeshError
from mesh.health import StorageHealth
from mesh.identity import Identity, load_identity, parse_peer_id
from mesh.net.node import Node, NodeConfig, SessionClosed, open_node
from mesh.net.peer import PeerSession
from mesh.session import PeerInfo
from mesh.session_frames import ProfileSummary
from mesh.store import Store
from mesh.wire import Frame

log = logging.getLogger("agents.runtime")
SHUTDOWN_SECONDS = 8.0
RECEIPT_COLLECT_SECONDS = 2.5
"""At shutdown, how long to keep asking producers for receipts of bought readings."""
MINED_WAIT_SECONDS = 3.0
"""At shutdown, how long to wait for the last anchors to be mined."""


def _confirm(table: PeerTable, mailbox: str, info: PeerInfo) -> None:
    """Record in the table that a handshake proved `info`'s peer at `mailbox`."""
    table.confirm(
        info.peer_id,
        mailbox,
        now=trio.current_time(),
        name=info.profile.name,
        services=",".join(info.profile.services),
    )


class Agent:
    """One machine's agent, built from a validated profile."""

    def __init__(
        self,
        profile: Profile,
        data_dir: Path,
        ledger: Path,
        *,
        passphrase: bytes | None = None,
        dashboard: DashboardConfig | None = None,
        chain: str = DEFAULT_CHAIN,
    ) -> None:
        """Prepare (nothing runs until `run`); `dashboard` overrides the profile's;
        `chain` is ``local`` (the ledger file `ledger`) or ``arc:test``/``arc:main``
        (`agents.chain_choice`)."""
        self.profile = profile
        self.dashboard = dashboard if dashboard is not None else profile.dashboard
        self.dashboard_url: str | None = None
        self.lag = LagMonitor()
        self.data_dir = data_dir
        self.ledger = ledger
        self.chain_choice = chain
        self._passphrase = passphrase
        self._stop = trio.Event()
        self._buying_stop = trio.Event()
        self.node: Node | None = None
        self.manager: ChannelManager | None = None
        self.proofs: Proofs | None = None
        self.provider: Provider | None = None
        self.buyer: Buyer | None = None
        self.wallet: Wallet | None = None
        self.identity: Identity | None = None
        self.anchorer: Anchorer | None = None
        self.receipts: ReceiptExchange | None = None
        self.purchases: Purchases | None = None
        self.sessions: SessionKeeper | None = None
        self.workflows: Workflows | None = None
        self.wants = [WantProgress(w) for w in profile.wants]
        self.table: PeerTable | None = None
        self.discovery: Discovery | None = None
        self.network: str | None = None
        self._db = trio.CapacityLimiter(1)
        self._standing = SellerStanding()
        self.storage = StorageHealth()
        """Whether the stores can be written: a fault stops new business, not the agent."""
        self._handlers: dict[str, tuple[Any, Handler]] = {}
        self.bridges = Bridges(profile)
        for i, spec in enumerate(profile.services):
            if spec.source is not None:  # a bridged feed: its source's readings
                self._handlers[spec.id] = (spec, self.bridges.handler(spec))
                continue
            try:
                self._handlers[spec.id] = (spec, resolve(spec.handler, spec.kind))
            except HandlerError as exc:
                raise ProfileError(profile.path, f"services[{i}].handler", str(exc)) from None

        if profile.inspection is not None:
            try:
                resolve_measure(profile.inspection.handler)
            except InspectionError as exc:
                raise ProfileError(profile.path, "inspection.handler", str(exc)) from None

    def request_stop(self) -> None:
        """Begin a clean shutdown."""
        self._stop.set()

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until `request_stop()`, then shut down cleanly."""
        profile = self.profile
        identity = self.identity = load_identity(self.data_dir / profile.key_file, self._passphrase)
        try:  # before anything starts: a certificate issued to another key is a profile error
            check_subject(profile.certificates, identity.public_key.hex())
        except CertsConfigError as exc:
            raise ProfileError(profile.path, exc.key, exc.problem) from None
        store = Store(self.data_dir / "agent.db", check_same_thread=False, synchronous="NORMAL")
        # The buyer's archive writes from the Trio thread: its own connection, so it
        # never shares one with the worker threads that use `store`.
        archive = Archive(Store(self.data_dir / "agent.db", synchronous="NORMAL"))
        chain = open_chain(self.chain_choice, self.ledger)
        channels: ChannelStore | None = None
        try:
            self.wallet = Wallet(store, identity)  # the chain's policy: at each sync
            channels = ChannelStore(store)
            config = NodeConfig(heartbeat_interval=profile.heartbeat, dead_after=profile.dead_after)
            summary = ProfileSummary(profile.name, profile.offers())
            # Who is on our mesh: the same site and the same network (genesis hash).
            network = self.network = await chain.network_id()
            site = profile.site
            async with (
                open_node(
                    identity,
                    profile.mailbox,
                    profile=summary,
                    config=config,
                    site=site,
                    network=network,
                ) as node,
                open_discovery(
                    identity,
                    interfaces=profile.interfaces,
                    mailbox=node.address,
                    name=profile.name,
                    services=profile.summary(),
                    ttl=profile.discovery_ttl,
                    site=site,
                    network=network,
                ) as discovery,
                trio.open_nursery() as nursery,
            ):
                self.node = node
                # Peers may dial in while discovery starts: replay those sessions too.
                sessions = node.watch_sessions(replay=True)
                self.provider = Provider(
                    identity,
                    self._handlers,
                    self._reply,
                    self._check_channel,
                    nursery,
                    health=self.storage,
                )
                self.manager = ChannelManager(
                    identity,
                    node,
                    chain,
                    self.wallet,
                    channels,
                    self._db,
                    ChannelConfig(
                        window=profile.window,
                        admission=profile.admission,
                        keep_settled=profile.retention.channels_days * 86_400,
                    ),
                    on_paid=self.provider.on_paid,
                    health=self.storage,
                )
                self.proofs = Proofs(
                    identity, profile.certificates, profile.requirements, self._send, chain
                )
                await nursery.start(self.proofs.run)
                self.manager.admit = self._admit
                self.manager.on_ended = self.provider.channel_ended
                self.buyer = Buyer(self._send, self.manager.pay)
                self.manager.on_final = self._channel_final
                try:  # coins are found now or at a later pass of `keep_wallet_synced`
                    await sync_wallet(self.wallet, chain, self._db)
                except ChainError as exc:
                    log.warning("wallet sync: %s", exc)
                await nursery.start(self.manager.run)
                self.anchorer = Anchorer(
                    identity,
                    store,
                    self.wallet,
                    chain,
                    db_limiter=self._db,
                    health=self.storage,
                    config=AnchorConfig(
                        batch=BatchPolicy(profile.anchor_every, profile.anchor_seconds),
                        confirm_interval=0.5,
                    ),
                )
                await nursery.start(self.anchorer.run)
                self.receipts = ReceiptExchange(
                    archive.archive,
                    self.anchorer,
                    self._send,
                    lambda: [s.peer_id for s in node.sessions()],
                    interval=profile.receipt_interval,
                )
                nursery.start_soon(self.receipts.run)
                self.provider.log_record = self._log_record
                self.buyer.keep_record = archive.keep_signed
                if self.bridges.wanted:
                    await nursery.start(self.bridges.run, self.status, archive.last_proven)
                    self.buyer.keep_record = self._keep_and_show(archive.keep_signed)
                    self.provider.on_reading = self.bridges.sold
                nursery.start_soon(keep_wallet_synced, self.wallet, chain, self._db, self.storage)
                nursery.start_soon(
                    keep_retention, profile.retention, store, self.wallet, self._db, self.storage
                )
                nursery.start_soon(node.serve, self._dispatch)
                self.table = discovery.table
                self.discovery = discovery
                for entry in profile.static_peers:
                    discovery.table.add_static(*parse_static(entry))  # checked by the profile
                table = discovery.table
                self.sessions = SessionKeeper(
                    node,
                    table,
                    SessionPlan(idle_close=profile.idle_close),
                    self._wanted,
                    lambda peer_id: self._standing.usable(peer_id, trio.current_time()),
                    lambda mailbox, info: _confirm(table, mailbox, info),
                )
                self.manager.effects.want_session = self.sessions.request
                nursery.start_soon(self._watch_sessions, sessions, discovery.table)
                await nursery.start(self.sessions.run)
                await nursery.start(serve_control, self.data_dir / "control.sock", self.control)
                nursery.start_soon(self.lag.run)
                if self.dashboard.enabled:
                    await self._serve_dashboard(nursery)
                self.purchases = Purchases(
                    profile,
                    self.manager,
                    self.buyer,
                    node,
                    lambda: self.table,
                    self._log_record,
                    self._close_quietly,
                    self._standing,
                    self._buying_stop,
                    self.proofs,
                )
                for progress in self.wants:
                    nursery.start_soon(self.purchases.want, progress)
                await self._start_workflows(nursery, store, chain, self.purchases, archive)
                task_status.started()
                log.info("%s up: %s at %s", profile.name, identity.peer_id[:16], node.address)
                await self._stop.wait()
                with trio.move_on_after(SHUTDOWN_SECONDS) as budget:
                    await self._shutdown()
                if budget.cancelled_caught:
                    log.warning("shutdown took longer than %.0f s; leaving", SHUTDOWN_SECONDS)
                nursery.cancel_scope.cancel()
        finally:
            chain.close()
            if channels is not None:
                channels.close()
            archive.close()
            store.close()
            (self.data_dir / "control.sock").unlink(missing_ok=True)

    async def _start_workflows(
        self,
        nursery: trio.Nursery,
        store: Store,
        chain: AgentChain,
        purchases: Purchases,
        archive: Archive,
    ) -> None:
        """Escrowed work orders, in whichever roles the profile plays (`agents.workflows`)."""
        assert self.identity and self.wallet and self.buyer and self.provider
        keep = self.buyer.keep_record
        orders = await trio.to_thread.run_sync(WorkOrderStore, store, limiter=self._db)
        assert self.sessions is not None
        sessions = self.sessions
        context = WorkContext(self.identity, self.wallet, chain, orders, self._send, self._db,
                              sessions.reachable, self.storage)  # fmt: skip

        def offers(want: WantSpec) -> tuple[str, int] | None:  # its providers dialled
            sessions.look(Wanted(want.service, want.max_price))
            return purchases.best_offer(want)

        work = self.workflows = Workflows(
            context, self.profile, buy=purchases.want, offers=offers,
            keep=keep or (lambda _signed: None), proven=archive.proven,
            require=self._inspector_certificate,
            log_record=self._log_record,
        )  # fmt: skip
        if keep is not None and self.profile.workflows:  # readings made while parts are

            def keep_and_note(signed: SignedRecord) -> None:
                keep(signed)
                work.saw_reading(signed)

            self.buyer.keep_record = keep_and_note
        self.provider.on_statement = work.statement
        await nursery.start(work.run, self._buying_stop)

    async def _inspector_certificate(self, peer_id: str, name: str) -> Certificate | None:
        assert self.proofs is not None
        return (await self.proofs.require(peer_id, name)).certificate

    async def _serve_dashboard(self, nursery: trio.Nursery) -> None:
        """Serve the dashboard, `/metrics` and proofs (read-only) in the agent's nursery."""
        config = self.dashboard
        assert config.host is not None
        app = agent_app(self.snapshot, RecordsView(self.data_dir), config.token)
        try:
            self.dashboard_url = await nursery.start(serve_app, app, config.host, config.port)
        except OSError as exc:
            raise MeshError(
                f"dashboard: cannot listen on {config.host}:{config.port}:"
                f" {exc.strerror or exc} (another agent's port? --dashboard off)"
            ) from None
        log.info("dashboard: %s", self.dashboard_url)

    async def _shutdown(self) -> None:
        """Stop buying, let orders settle, close every channel."""
        self._buying_stop.set()
        with trio.move_on_after(SHUTDOWN_SECONDS / 2):
            while any(p.state in ("buying", "looking") for p in self.wants):
                await trio.sleep(0.05)
        assert self.manager is not None
        async with trio.open_nursery() as nursery:
            for record, _ in self.manager.records():
                if record.state is State.OPEN:
                    nursery.start_soon(self._close_quietly, record.terms.channel_id)
        # What is not done within these few seconds is finished at the next start:
        # unconfirmed batches are confirmed, missing receipts asked for again.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._anchor_everything)
            nursery.start_soon(self._collect_receipts)

    async def _anchor_everything(self) -> None:
        """Anchor what was logged and wait a little to see it mined, so that (on a chain
        that mines quickly, like the demo's) every record can be proven right away."""
        if self.anchorer is None or self.anchorer.statistics().records_logged == 0:
            return
        try:
            await self.anchorer.anchor_now()
        except AnchoringError as exc:
            log.warning("anchoring at shutdown failed: %s", exc)
            return
        with trio.move_on_after(MINED_WAIT_SECONDS):
            await self.anchorer.wait_mined()

    async def _collect_receipts(self) -> None:
        assert self.receipts is not None
        waiting = await self.receipts.collect(RECEIPT_COLLECT_SECONDS)
        if waiting:
            log.info("%d bought reading(s) still wait for the producer's receipt", waiting)

    async def _close_quietly(self, channel_id: bytes) -> None:
        assert self.manager is not None
        try:
            await self.manager.close(channel_id)
        except (ChannelFailure, MeshError, TimeoutError) as exc:
            log.warning("channel %s not closed at shutdown: %s", channel_id.hex()[:16], exc)

    # ------------------------------------------------------------------ wiring

    def _keep_and_show(
        self, keep: Callable[[SignedRecord], object]
    ) -> Callable[[SignedRecord], None]:
        """The buyer's record keeper, also showing each bought reading on the bridges."""

        def keep_and_show(signed: SignedRecord) -> None:
            keep(signed)
            self.bridges.bought(signed)

        return keep_and_show

    def _channel_final(self, channel_id: bytes) -> None:
        """The manager let a settled channel go: so do the meters on it."""
        if self.provider is not None:
            self.provider.channel_final(channel_id)
        if self.buyer is not None:
            self.buyer.channel_final(channel_id)

    def _wanted(self) -> list[Wanted]:
        """What this agent is buying now (its trading partners follow from it)."""
        if self.purchases is None:
            return []
        return [Wanted(w.service, w.max_price, peer) for w, peer in self.purchases.running()]

    async def _dispatch(self, peer_id: str, frame: Frame, last: bool) -> None:
        assert self.manager and self.provider and self.buyer and self.receipts and self.proofs
        assert self.sessions is not None
        self.sessions.touch(peer_id)
        with log_context(peer=peer_id):  # the frame handlers add its channel and service
            if not (
                await self.manager.handle(peer_id, frame, last)
                or await self.provider.handle(peer_id, frame)
                or await self.buyer.handle(peer_id, frame)
                or await self.receipts.handle(peer_id, frame)
                or await self.proofs.handle(peer_id, frame)
                or (self.workflows is not None and await self.workflows.handle(peer_id, frame))
            ):
                log.info("peer %s sent %s; ignored", peer_id[:16], type(frame).__name__)

    async def _watch_sessions(
        self, events: trio.MemoryReceiveChannel[Any], table: PeerTable
    ) -> None:
        assert self.provider and self.manager and self.receipts and self.buyer
        async for event in events:
            peer_id = event.peer.peer_id
            if event.up:
                # Whoever dialled, the handshake proved this peer: into the table with
                # the offers it claimed (a peer that dialled us may be known no other way).
                known = table.get(peer_id)
                _confirm(table, known.mailbox if known else event.peer.mailbox, event.peer)
                self.provider.peer_back(peer_id)
                await self.manager.peer_connected(peer_id)
                await self.receipts.ask(peer_id)
            else:
                log.info("peer %s lost (%s): meters frozen", peer_id[:16], event.reason)
                if self.sessions is not None:
                    self.sessions.session_ended(peer_id)
                self.provider.peer_lost(peer_id)
                self.buyer.peer_lost(peer_id)  # its orders end; the want orders again
                known = table.get(peer_id)
                replaced = self.node is not None and self.node.session(peer_id) is not None
                if known and known.instance is None and not known.static and not replaced:
                    table.remove(peer_id)  # only a session vouched for it

    async def _send(self, peer_id: str, frame: Frame) -> None:
        """Send over the peer's session, dialling one first if there is none (sessions
        on demand: a work order's party, a certificate to prove, a receipt to ask for)."""
        assert self.sessions is not None
        self.sessions.touch(peer_id)
        session = await self.sessions.ensure(peer_id)
        await self._over(session, peer_id, frame)

    async def _reply(self, peer_id: str, frame: Frame) -> None:
        """Send over the peer's session if there is one (a seller never dials a buyer
        to deliver: the buyer holds the session while it buys; what it sends back marks
        the session active)."""
        assert self.node is not None
        await self._over(self.node.session(peer_id), peer_id, frame)

    @staticmethod
    async def _over(session: PeerSession | None, peer_id: str, frame: Frame) -> None:
        if session is None:
            return
        try:
            await session.send(frame)
        except SessionClosed:
            log.info("peer %s: session closed while sending %s", peer_id[:16], type(frame).__name__)

    async def _log_record(
        self, stream: str, payload: bytes, audience: str | None = None
    ) -> tuple[bytes, bytes]:
        assert self.anchorer is not None
        to = parse_peer_id(audience) if audience is not None else None
        signed = await self.anchorer.log(stream, payload, audience=to)
        return signed.body, signed.signature

    def _admit(self, peer_id: str, service: str) -> tuple[str, str] | None:
        """Whether `peer_id` may open a channel paying for `service`: only a buyer the
        service's ``buyers`` lists (before any coin moves), and for a service that
        requires proof only a buyer that gave it (`agents.proofs`)."""
        spec = self.profile.service(service)
        if spec is not None and not spec.may_buy(peer_id):
            return "not-allowed", f"{peer_id[:16]}… may not buy {service}"
        if spec is None or not spec.require or self.proofs is None:
            return None
        return self.proofs.admit(peer_id, spec.require)

    def _check_channel(self, peer_id: str, channel_id: bytes, service: str) -> str | None:
        assert self.manager is not None
        held = self.manager.held(channel_id)
        if held is None:
            return "unknown channel"
        record, svc = held
        if record.role is not Role.PAYEE or record.peer_id != peer_id:
            return "not a channel paying us from this peer"
        if svc != service:
            return f"channel pays for {svc}, not {service}"
        if record.state is not State.OPEN:
            return f"channel is {record.state.value}"
        return None

    # ------------------------------------------------------------------ control

    async def control(
        self, command: dict[str, Any], gone: trio.Event | None = None
    ) -> dict[str, Any]:
        """Answer a control-socket command: status, buy, close (`gone`: the asker hung
        up; a `mesh buy` then stops buying, as when its time is up)."""
        cmd = command.get("cmd")
        if cmd == "status":
            return await self.snapshot()
        if cmd == "buy":  # `mesh buy`: a want of its own (agents.buy_command)
            assert self.purchases is not None
            return await buy(self.purchases, command, self._track_buy, gone)
        if cmd == "anchor":
            assert self.anchorer is not None
            batches = await self.anchorer.anchor_now()
            return {"batches": len(batches)}
        if cmd == "close":  # the id may be a unique prefix (`find_channel`)
            assert self.manager is not None
            database = self.data_dir / "agent.db"
            return await close_channel(self.manager, database, str(command["channel_id"]))
        return {"error": f"unknown command {cmd!r}"}

    def _track_buy(self, progress: WantProgress) -> None:
        """Show a `mesh buy`'s want in status; past `RECENT_ORDERS` of them, the oldest goes."""
        self.wants.append(progress)
        if len(self.wants) - len(self.profile.wants) > RECENT_ORDERS:
            del self.wants[len(self.profile.wants)]

    def status(self, height: int | None = None) -> dict[str, Any]:
        """Everything `mesh status` shows (`agents.agent_status`), from memory."""
        return agent_status(self, height)

    async def snapshot(self) -> dict[str, Any]:
        """The status with the chain's height and the wallet's balance: what `mesh status
        --json`, the dashboard and `/metrics` show."""
        height = await self.manager.chain_height() if self.manager is not None else None
        status = self.status(height)
        if self.wallet is not None:
            balance = await trio.to_thread.run_sync(self.wallet.balance, limiter=self._db)
            status["wallet"] = {"available": balance.available, "reserved": balance.reserved}
        return status

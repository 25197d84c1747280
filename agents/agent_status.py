"""What an agent shows of itself: the one status snapshot behind `mesh status`, the
dashboard and `/metrics`, so the three always agree.

`agent_status` is synchronous and reads only memory (counters, tables, meters);
`Agent.snapshot` adds the chain height and the wallet's balance, which need I/O.
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Protocol

from agents.bridges import Bridges
from agents.buying import WantProgress
from agents.channels import ChannelManager
from agents.profile import Profile
from agents.proofs import Proofs
from agents.receipts import ReceiptExchange
from agents.services.buyer import Buyer, OrderResult
from agents.services.orders import Provider
from agents.web.lag import LagMonitor
from agents.workflows import Workflows
from mesh.anchoring import Anchorer
from mesh.discovery import Discovery, PeerTable
from mesh.health import StorageHealth
from mesh.identity import Identity
from mesh.net.node import Node


class Shown(Protocol):
    """What of an agent (`agents.runtime.Agent`) its status reads."""

    profile: Profile
    node: Node | None
    manager: ChannelManager | None
    proofs: Proofs | None
    workflows: Workflows | None
    provider: Provider | None
    buyer: Buyer | None
    anchorer: Anchorer | None
    receipts: ReceiptExchange | None
    identity: Identity | None
    table: PeerTable | None
    discovery: Discovery | None
    network: str | None
    dashboard_url: str | None
    bridges: Bridges
    storage: StorageHealth
    lag: LagMonitor
    wants: list[WantProgress]


def agent_status(agent: Shown, height: int | None = None) -> dict[str, Any]:
    """Everything `mesh status` shows, as JSON-ready data; with the chain's `height`,
    how long a payer's coins stay locked in each channel."""
    node, manager, profile = agent.node, agent.manager, agent.profile
    # Per channel: signed and on-chain totals, locked-until (`channel_summary`).
    channels = manager.summaries(height) if manager is not None else []
    meters = agent.provider.meter_rows() if agent.provider is not None else []
    live: dict[str, list[OrderResult]] = {p.want.service: [] for p in agent.wants}
    for order in agent.buyer.in_flight() if agent.buyer is not None else []:
        live.setdefault(order.service, []).append(order)
    table, discovery = agent.table, agent.discovery
    return {
        "agent": profile.name,
        "site": profile.site,
        "network": agent.network,
        "height": height,
        "discovery": asdict(discovery.statistics()) if discovery else None,
        "peer_id": agent.identity.peer_id if agent.identity else None,
        "mailbox": node.address if node else None,
        "dashboard": agent.dashboard_url,
        "pid": os.getpid(),
        "peers": [
            {
                "peer_id": p.peer_id,
                "name": p.name,
                "mailbox": p.mailbox,
                "services": p.services,
                "confirmed": p.confirmed,
            }
            for p in (table.snapshot() if table else {}).values()
        ],
        "sessions": [s.peer_id for s in node.sessions()] if node else [],
        "node": asdict(node.statistics()) if node else None,
        "services": [
            {
                "id": s.id,
                "kind": s.kind,
                "unit": s.unit,
                "price": s.price,
                "source": s.source.kind if s.source is not None else s.handler,
            }
            for s in profile.services
        ],
        "vendor": profile.vendor,
        "bridges": agent.bridges.statistics() if agent.bridges.wanted else None,
        "channels": channels,
        "channel_stats": asdict(manager.statistics()) if manager is not None else None,
        "meters": meters,
        "sales": agent.provider.sales.to_json() if agent.provider is not None else {},
        "purchases": agent.buyer.purchases.to_json() if agent.buyer is not None else {},
        "anchoring": asdict(agent.anchorer.statistics()) if agent.anchorer else None,
        "storage": asdict(agent.storage.statistics()),
        "receipts": asdict(agent.receipts.statistics()) if agent.receipts else None,
        "certificates": agent.proofs.snapshot() if agent.proofs is not None else None,
        "work_orders": agent.workflows.status() if agent.workflows is not None else None,
        "loop": asdict(agent.lag.lag),
        "wants": [
            {
                "service": p.want.service,
                "state": p.state,
                "delivered": p.delivered + sum(o.delivered for o in live[p.want.service]),
                "paid": p.paid + sum(o.paid for o in live[p.want.service]),
                "units": p.want.units,
                "budget": p.want.budget,
                "placed": p.placed + len(live[p.want.service]),
                "last_failure": p.failure or None,
            }
            for p in agent.wants
        ],
    }

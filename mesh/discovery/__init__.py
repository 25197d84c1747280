"""Discovery: find other agents on the LAN by mDNS, and keep a table of them.

Agents advertise ``_m2mesh._tcp.local.`` under an instance name derived from their
peer id, with a TXT record signed by their identity key (`records`); they browse
for each other through zeroconf bridged into Trio (`service`, `bridge`); what they learn
lands in a `PeerTable` (`table`) that also holds static peers for networks
without multicast. Everything discovery learns is a hint: a peer id is trusted
only after a session handshake, which the runtime reports with
`PeerTable.confirm`.

``python -m mesh.discovery`` runs discovery alone and prints the table's events
as JSON lines (used by the integration tests and the benchmark).
(docs/ARCHITECTURE.md §2, §8)
"""

from mesh.discovery.records import (
    SERVICE_TYPE,
    Announcement,
    AnnouncementRejected,
    RejectReason,
    announce,
    host_name,
    instance_label,
    instance_name,
    parse_txt,
    signing_digest,
    usable_addresses,
    verify_announcement,
)
from mesh.discovery.service import (
    DEFAULT_TTL,
    LOOPBACK_INTERFACES,
    Discovery,
    DiscoveryError,
    DiscoveryStatistics,
    open_discovery,
)
from mesh.discovery.table import (
    Peer,
    PeerAdded,
    PeerEvent,
    PeerRemoved,
    PeerTable,
    PeerUpdated,
    Refresh,
    Removal,
    TableStatistics,
    TimerActions,
    parse_static,
)

__all__ = [
    "DEFAULT_TTL",
    "LOOPBACK_INTERFACES",
    "SERVICE_TYPE",
    "Announcement",
    "AnnouncementRejected",
    "Discovery",
    "DiscoveryError",
    "DiscoveryStatistics",
    "Peer",
    "PeerAdded",
    "PeerEvent",
    "PeerRemoved",
    "PeerTable",
    "PeerUpdated",
    "Refresh",
    "RejectReason",
    "Removal",
    "TableStatistics",
    "TimerActions",
    "announce",
    "host_name",
    "instance_label",
    "instance_name",
    "open_discovery",
    "parse_static",
    "parse_txt",
    "signing_digest",
    "usable_addresses",
    "verify_announcement",
]

"""Service kinds (tool-time, data-feed, call), the vendor API, and order handling.

(docs/ARCHITECTURE.md §6)
"""

from agents.services.buyer import Buyer, OrderResult
from agents.services.orders import Provider
from agents.services.vendor import (
    ENTRY_POINT_GROUP,
    CallContext,
    FeedContext,
    Handler,
    HandlerError,
    ServiceContext,
    ToolContext,
    installed_handlers,
    resolve,
    vendor,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Buyer",
    "CallContext",
    "FeedContext",
    "Handler",
    "HandlerError",
    "OrderResult",
    "Provider",
    "ServiceContext",
    "ToolContext",
    "installed_handlers",
    "resolve",
    "vendor",
]

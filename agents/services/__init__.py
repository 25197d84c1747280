"""Service kinds (tool-time, data-feed, call), the vendor API, and order handling."""

from agents.services.orders import Buyer, OrderResult, Provider
from agents.services.vendor import (
    CallContext,
    FeedContext,
    Handler,
    HandlerError,
    ServiceContext,
    ToolContext,
    resolve,
    vendor,
)

__all__ = [
    "Buyer",
    "CallContext",
    "FeedContext",
    "Handler",
    "HandlerError",
    "OrderResult",
    "Provider",
    "ServiceContext",
    "ToolContext",
    "resolve",
    "vendor",
]

"""m2mesh: a machine-to-machine micropayment and messaging mesh.

The public API is what this module re-exports. (docs/ARCHITECTURE.md §1)
"""

from mesh.errors import IdentityError, LocalProtocolError, MeshError, RemoteProtocolError
from mesh.identity import Identity, load_identity, save_identity
from mesh.wire import PROTOCOL_VERSION, Frame, decode, encode

__all__ = [
    "PROTOCOL_VERSION",
    "Frame",
    "Identity",
    "IdentityError",
    "LocalProtocolError",
    "MeshError",
    "RemoteProtocolError",
    "decode",
    "encode",
    "load_identity",
    "save_identity",
]

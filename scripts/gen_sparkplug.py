"""Regenerate `agents/ot/sparkplug_b_pb2.py` (and its `.pyi`) from `sparkplug_b.proto`.

The proto is Eclipse Tahu's ``sparkplug_b/sparkplug_b.proto`` (EPL-2.0, Sparkplug 3.0),
kept byte-for-byte beside the generated module. Run this after replacing it:

    .venv/bin/python scripts/gen_sparkplug.py

It needs ``grpcio-tools`` (``pip install grpcio-tools``), whose bundled ``protoc`` must not
be newer than the ``protobuf`` runtime the agent installs (the generated module checks
that on import). The output is committed; ruff and mypy skip it (see pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path

OT = Path(__file__).resolve().parent.parent / "agents" / "ot"
PROTO = "sparkplug_b.proto"


def main() -> int:
    """Run protoc on the proto in `agents/ot`; 0 on success."""
    try:
        from grpc_tools import protoc
    except ImportError:
        print("grpcio-tools is missing: pip install grpcio-tools", file=sys.stderr)
        return 1
    args = [
        "protoc",
        f"--proto_path={OT}",
        f"--python_out={OT}",
        f"--pyi_out={OT}",
        str(OT / PROTO),
    ]
    status = int(protoc.main(args))
    if status == 0:
        print(f"wrote {OT / 'sparkplug_b_pb2.py'} and .pyi")
    return status


if __name__ == "__main__":
    sys.exit(main())

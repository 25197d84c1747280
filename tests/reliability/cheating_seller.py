"""`mesh run` with a provider that cheats its buyers, for the buyer-safety tests.

``python -m tests.reliability.cheating_seller CHEAT -- MESH-ARGS...`` runs the real
agent (`agents.cli.main(MESH-ARGS)`) with one provider method patched:

unsigned   every reading of a data feed goes out with no record and no signature
replay     every reading is the feed's first signed reading again
silent     orders are accepted and nothing is ever delivered
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from agents import cli
from agents.services import orders

_first: dict[str, tuple[bytes, bytes]] = {}
_real_produce = orders.Provider._produce


async def unsigned(self: Any, handler: Any, ctx: Any, order: Any) -> tuple[bytes, bytes]:
    await trio.sleep(ctx.tick)
    return b"", b""


async def replay(self: Any, handler: Any, ctx: Any, order: Any) -> tuple[bytes, bytes]:
    produced: tuple[bytes, bytes] = await _real_produce(self, handler, ctx, order)
    return _first.setdefault(ctx.service_id, produced)


async def silent(self: Any, handler: Any, ctx: Any, order: Any) -> tuple[bytes, bytes]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


CHEATS = {"unsigned": unsigned, "replay": replay, "silent": silent}


def main() -> None:
    cheat, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: cheating_seller CHEAT -- MESH-ARGS..."
    orders.Provider._produce = CHEATS[cheat]  # type: ignore[method-assign]
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main()

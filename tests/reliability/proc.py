"""The helper process of the reliability tests: ``python -m tests.reliability.proc ROLE``.

Roles: provider, buyer, buyers, resume (`channel_roles`); violator, flood, slow
(`hostile_roles`); anchorer (`anchoring_roles`); ledger-writer (`ledger_writer`).
Each prints one JSON object per line on stdout, the first of them
``{"event": "ready", ...}`` or the role's first result, and is stopped by the tests
by its PID. Logs go to stderr at ERROR unless ``M2MESH_HELPER_LOG`` names another
level (``M2MESH_HELPER_LOG=info pytest -s ...`` shows what every helper did).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from tests.reliability import anchoring_roles, channel_roles, hostile_roles, ledger_writer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "role",
        choices=[
            *channel_roles.ROLES,
            *hostile_roles.ROLES,
            *anchoring_roles.ROLES,
            "ledger-writer",
        ],
    )
    channel_roles.add_arguments(parser)
    hostile_roles.add_arguments(parser)
    anchoring_roles.add_arguments(parser)
    parser.add_argument("--log-level", default=os.environ.get("M2MESH_HELPER_LOG", "error"))
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if args.role == "ledger-writer":
        ledger_writer.write_forever(args)
        return
    roles = {**channel_roles.ROLES, **hostile_roles.ROLES, **anchoring_roles.ROLES}
    role = roles[args.role]
    trio.run(role, args)


if __name__ == "__main__":
    main()

"""Run the TypeScript reference implementation of BRC-52 (`@bsv/sdk`) from Python tests.

`sdk_dir()` installs the pinned SDK with npm into a temporary directory; `NodeSdk.call()` runs
one operation of `sdk_ops.cjs` in a fresh `node` process (about 0.1 s each), sending one JSON
request on stdin and reading one JSON reply on stdout. All values use the BRC-52 JSON forms
(see the header of `sdk_ops.cjs`); private keys are 32-byte hex strings.

Without node/npm, or when the install fails, the tests are skipped -- unless the environment
variable CI is set (to anything but "", "0" or "false"), in which case they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

SDK_PACKAGE = "@bsv/sdk"
SDK_VERSION = "2.1.0"
OPS_SCRIPT = Path(__file__).with_name("sdk_ops.cjs")
CALL_TIMEOUT = 30.0
INSTALL_TIMEOUT = 300.0


class SdkError(Exception):
    """A JavaScript exception thrown by the SDK (or by `sdk_ops.cjs` checking its arguments)."""

    def __init__(self, message: str, *, name: str = "Error", stack: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.stack = stack


class HarnessError(RuntimeError):
    """The bridge itself broke: node crashed, timed out, or did not answer with JSON."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _unavailable(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def _installed_version(package_dir: Path) -> str | None:
    try:
        manifest = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = manifest.get("version")
    return version if isinstance(version, str) else None


def sdk_dir(tmp_root: Path) -> Path:
    """Install `@bsv/sdk@SDK_VERSION` under `tmp_root` (once) and return the package directory,
    `tmp_root/node_modules/@bsv/sdk`. Skips (fails under CI) when node/npm are missing or the
    install fails."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        _unavailable(
            f"{' and '.join(missing)} not found on PATH: needed to install and run "
            f"{SDK_PACKAGE}@{SDK_VERSION} (the BRC-52 reference implementation)"
        )
    package_dir = tmp_root / "node_modules" / "@bsv" / "sdk"
    if _installed_version(package_dir) == SDK_VERSION:
        return package_dir
    npm = shutil.which("npm")
    assert npm is not None
    cmd = [
        npm,
        "install",
        "--no-audit",
        "--no-fund",
        "--prefix",
        str(tmp_root),
        f"{SDK_PACKAGE}@{SDK_VERSION}",
    ]
    shown = " ".join(cmd[1:])
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        _unavailable(f"`npm {shown}` timed out after {INSTALL_TIMEOUT:.0f} s:\n{output}")
    if proc.returncode != 0:
        _unavailable(
            f"`npm {shown}` failed with exit status {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    version = _installed_version(package_dir)
    if version != SDK_VERSION:
        _unavailable(
            f"`npm {shown}` left version {version!r} in {package_dir}, expected {SDK_VERSION}:\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return package_dir


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


class NodeSdk:
    """Calls into an installed `@bsv/sdk` through `sdk_ops.cjs`, one node process per call."""

    def __init__(self, package_dir: Path, *, timeout: float = CALL_TIMEOUT) -> None:
        node = shutil.which("node")
        if node is None:
            raise HarnessError("node not found on PATH")
        self.node = node
        self.package_dir = package_dir
        self.version = _installed_version(package_dir)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run `op` with `args` (JSON-serialisable); return the reply, or raise `SdkError` for
        an exception thrown in JavaScript and `HarnessError` when the bridge breaks."""
        request = json.dumps({"op": op, "args": args})
        cmd = [self.node, str(OPS_SCRIPT), str(self.package_dir)]
        try:
            proc = subprocess.run(
                cmd,
                input=request,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(
                f"sdk op {op!r} timed out after {self.timeout} s; stderr:\n{_text(exc.stderr)}"
            ) from exc
        if proc.returncode != 0:
            raise HarnessError(
                f"sdk op {op!r}: node exited with status {proc.returncode}; "
                f"stderr:\n{proc.stderr}stdout:\n{proc.stdout}"
            )
        try:
            reply = json.loads(proc.stdout)
        except ValueError as exc:
            raise HarnessError(
                f"sdk op {op!r}: no JSON reply; stdout:\n{proc.stdout}stderr:\n{proc.stderr}"
            ) from exc
        if not isinstance(reply, dict):
            raise HarnessError(f"sdk op {op!r}: reply is not an object: {reply!r}")
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            result: dict[str, Any] = reply["result"]
            return result
        if reply.get("ok") is False:
            raise SdkError(
                str(reply.get("error")),
                name=str(reply.get("name", "Error")),
                stack=reply.get("stack"),
            )
        raise HarnessError(f"sdk op {op!r}: malformed reply {reply!r}")

"""A real MQTT broker for the tests, and an independent client to watch it.

`Mosquitto.start` writes a config (one listener on 127.0.0.1 only, anonymous clients
allowed, no persistence), starts Debian's ``mosquitto -c`` on a free port and waits until
it accepts TCP; `stop` ends it (terminate, then kill). Its log is kept for failure messages.

`Recorder` is a plain paho-mqtt client with its own network thread (``loop_start``), not
the agent's Trio client: it records every message on a topic filter, so tests check what
the broker really delivered.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import trio
from paho.mqtt.client import Client, MQTTMessage, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

BINARY = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def mosquitto_binary() -> str | None:
    """The mosquitto executable, if this host has one."""
    if Path(BINARY).exists():
        return BINARY
    return shutil.which("mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Mosquitto:
    """One broker process (see the module docstring)."""

    def __init__(self, directory: Path, binary: str = BINARY) -> None:
        self.directory = directory
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{HOST}:{self.port}"

    def log(self) -> str:
        """What the broker wrote so far."""
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10.0, *, port: int = 0) -> None:
        """Start it (on `port`, else a free one; three are tried) and wait until it
        accepts connections."""
        for _ in range(1 if port else 3):
            self.port = port or free_port()
            config = self.directory / "mosquitto.conf"
            config.write_text(
                f"listener {self.port} {HOST}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\n"
            )
            with open(self.directory / "mosquitto.log", "ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            if self._wait_accepting(timeout):
                return
            self.stop()
        raise RuntimeError(f"mosquitto did not start:\n{self.log()}")

    def _wait_accepting(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """End the broker (terminate, kill after 5 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Recorder:
    """Every message the broker delivers on `topic_filter`, as (topic, payload), in order."""

    def __init__(self, url: str, topic_filter: str) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("the recorder could not subscribe")

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def snapshot(self) -> list[tuple[str, bytes]]:
        """The messages so far."""
        with self._lock:
            return list(self.messages)

    async def wait_for(
        self, done: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 5.0
    ) -> list[tuple[str, bytes]]:
        """Poll until `done(messages)`; the messages then (TimeoutError after `timeout`)."""
        with trio.fail_after(timeout):
            while not done(messages := self.snapshot()):
                await trio.sleep(0.01)
        return messages

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish as this independent client (QoS 0)."""
        self.client.publish(topic, payload, 0).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect and stop its thread."""
        self.client.disconnect()
        self.client.loop_stop()

"""The Trio MQTT client (paho through its socket hooks) against a real mosquitto."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from agents.ot.mqtt import BrokerUrl, Message, MqttClient, MqttError, MqttOptions
from tests.ot.mosquitto import Mosquitto, Recorder, free_port


def options(broker: Mosquitto | str, **kw: object) -> MqttOptions:
    url = broker.url if isinstance(broker, Mosquitto) else broker
    return MqttOptions(BrokerUrl.parse(url), **kw)  # type: ignore[arg-type]


def test_broker_urls() -> None:
    assert BrokerUrl.parse("mqtt://h") == BrokerUrl("h", 1883)
    assert str(BrokerUrl.parse("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"
    for bad in ("tcp://h:1", "mqtt://", "mqtt://h:1/x", "mqtt://u@h", "mqtt://h:70000"):
        with pytest.raises(ValueError, match="mqtt"):
            BrokerUrl.parse(bad)


async def test_publish_and_subscribe_once_per_message(mosquitto: Mosquitto) -> None:
    sub, pub = MqttClient(options(mosquitto)), MqttClient(options(mosquitto))
    await sub.connect()
    await pub.connect()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        nursery.start_soon(pub.serve)
        channel = await sub.subscribe("mq/a/#", "mq/+/x", qos=1)
        pub.publish_nowait("mq/a/x", b"both filters", qos=1)
        await pub.publish("mq/b/x", b"one", retain=False)
        pub.publish_nowait("mq/c/y", b"none")
        with trio.fail_after(5):
            got = [await channel.receive(), await channel.receive()]
        assert [(m.topic, m.payload) for m in got] == [
            ("mq/a/x", b"both filters"),
            ("mq/b/x", b"one"),
        ]
        await sub.disconnect()
        await pub.disconnect()
    with pytest.raises(trio.EndOfChannel):
        channel.receive_nowait()
    assert pub.statistics().published == 3 and not pub.connected
    with pytest.raises(MqttError, match="not connected"):
        pub.publish_nowait("mq/a", b"")


async def test_will_fires_on_cancel_not_on_clean_disconnect(mosquitto: Mosquitto) -> None:
    recorder = Recorder(mosquitto.url, "will/#")
    try:
        clean = MqttClient(options(mosquitto))
        await clean.connect(Message("will/clean", b"x", 1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clean.serve)
            await clean.disconnect()
        cancelled = MqttClient(options(mosquitto))
        await cancelled.connect(Message("will/cancelled", b"gone", 1))
        with trio.move_on_after(0.2):
            await cancelled.serve()
        got = await recorder.wait_for(lambda m: len(m) >= 1)
        await trio.sleep(0.2)
        assert recorder.snapshot() == got == [("will/cancelled", b"gone")]
    finally:
        recorder.close()


async def test_connect_errors_are_mqtt_errors() -> None:
    client = MqttClient(options(f"mqtt://127.0.0.1:{free_port()}"))
    with pytest.raises(MqttError, match=r"cannot reach mqtt://127\.0\.0\.1:.*refused") as info:
        await client.connect()
    assert info.value.connect_sent is False
    assert not client.connected


async def test_publish_nowait_is_bounded(mosquitto: Mosquitto) -> None:
    client = MqttClient(options(mosquitto, max_unsent=2))
    await client.connect()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.serve)
        client.publish_nowait("b/1", b"1")
        client.publish_nowait("b/2", b"2")
        with pytest.raises(trio.WouldBlock):
            client.publish_nowait("b/3", b"3")
        with trio.fail_after(5):
            await client.publish("b/3", b"3")  # waits for the writer
        await client.disconnect()
    assert client.statistics().published == 3


async def test_run_reconnects_with_backoff_and_ends_cleanly(own_mosquitto: Mosquitto) -> None:
    broker = own_mosquitto
    downs: list[MqttError] = []
    sessions: list[int] = []
    finish = trio.Event()
    client = MqttClient(options(broker))

    async def session(c: MqttClient) -> None:
        sessions.append(c.connects)
        if len(sessions) == 2:
            await finish.wait()
            return
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(client.run, session, on_down=downs.append))
        with trio.fail_after(5):
            while not sessions:
                await trio.sleep(0.01)
        broker.stop()
        await trio.sleep(0.8)  # one failed attempt at 0.5 s, the next at 1.5 s
        broker.start(port=broker.port)
        with trio.fail_after(5):
            while len(sessions) < 2:
                await trio.sleep(0.01)
        finish.set()  # the session returns: run() disconnects and returns
    assert sessions == [1, 2]
    assert [d.connect_sent for d in downs] == [True, False]
    assert "connection" in str(downs[0]) and "cannot reach" in str(downs[1])
    assert not client.connected

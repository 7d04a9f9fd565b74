"""Incoming QoS 2 held across a save in one process and a restore in a NEW process (mosquitto).

The mqttsession client (a child process, behind ``MQTTProxy``) is subscribed at QoS 2. Two QoS 2
messages reach it, and the proxy stops each flow half way:

* ``in:1``: its PUBREC (client to broker) is dropped: the broker believes the PUBLISH was lost;
* ``in:2``: its PUBREL (broker to client) is dropped: the client holds it, undelivered.

The client stored both before answering PUBREC (so they are in the saved text), delivered neither.
The session is saved, the process dies, a new process restores it (IPWorks procedure (a) or (b)).
On the reconnect the broker resends [MQTT-4.4.0-1]: a PUBLISH with DUP=1 for ``in:1``, which the
client must answer with PUBREC without delivering it twice [MQTT-4.3.3-10], and a PUBREL for
``in:2``. Each message is then delivered exactly once: ``on_message_in`` fires once per message
in total, across both processes.

amqtt is left out on purpose: it never resends unacknowledged PUBLISH or PUBREL to a reconnecting
client (BROKERS.md bug 2), so there is nothing to resume from its side.
"""

from __future__ import annotations

from typing import Any

import pytest

from mqttsession import load_state

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

Worker, unique = _procs.Worker, _procs.unique

pytestmark = pytest.mark.integration


def _events(w: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in w.call("events") if e["event"] == name]


@pytest.mark.parametrize("procedure", ["a", "b"], ids=["on_connected", "restore_first"])
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_incoming_qos2_resumed_in_new_process_delivered_once(
    mosquitto: Any, mqtt_proxy_factory: Any, protocol: int, procedure: str
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("in")
    topic = f"mqs/{tag}"
    client_id = unique("sub")
    configs = ["SessionExpInterval=600"] if protocol == 5 else []

    with Worker("process-1") as w1:
        w1.call("new", client_id=client_id, clean_session=False, protocol_version=protocol,
                config=configs)
        w1.call("connect", port=proxy.port)
        w1.call("subscribe", topic=topic, qos=2)
        w1.call("wait_event", event="on_subscribed")

        proxy.drop("c2s", "PUBREC", count=1)
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(2, f"{tag}:1")], protocol)
        rec1 = proxy.wait_for("c2s", "PUBREC", predicate=lambda r: r.dropped)
        proxy.drop("s2c", "PUBREL")
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(2, f"{tag}:2")], protocol)
        rel2 = proxy.wait_for("s2c", "PUBREL", predicate=lambda r: r.dropped)
        id1, id2 = rec1.packet_id, rel2.packet_id
        assert id1 != id2

        status = w1.call("status")
        assert sorted((m["packet_id"], m["message"], m["qos"]) for m in status["incoming"]) == \
            sorted([(id1, f"{tag}:1", 2), (id2, f"{tag}:2", 2)])
        assert _events(w1, "on_message_in") == []  # QoS 2 is delivered on PUBREL, not before
        saved = w1.call("save")
        w1.exit()  # no DISCONNECT: the saved text is all that is left

    view = load_state(saved)
    assert sorted((m.packet_id, m.payload) for m in view.incoming) == \
        sorted([(id1, f"{tag}:1".encode()), (id2, f"{tag}:2".encode())])
    assert dict(view.subscriptions) == {topic: 2}
    proxy.clear_drops()

    with Worker("process-2") as w2:
        w2.call("new", client_id=client_id, clean_session=False, protocol_version=protocol,
                config=configs)
        if procedure == "a":
            w2.call("connect", port=proxy.port, restore_in_on_connected=saved)
            assert w2.call("status")["in_connected"] == [{"SessionPresent": "True", "restored": True}]
        else:
            w2.call("restore", state=saved)
            assert len(w2.call("status")["incoming"]) == 2
            w2.call("connect", port=proxy.port)
        w2.call("wait_event", event="on_message_in", count=2)
        # a barrier: one more message on the same subscription, delivered after the resumed ones
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(2, f"{tag}:END")], protocol)
        _procs.wait_until(
            lambda: any(e["message"] == f"{tag}:END" for e in _events(w2, "on_message_in")),
            what="the barrier message")
        delivered = [(e["message"], e["qos"]) for e in _events(w2, "on_message_in")]
        assert sorted(delivered) == sorted([(f"{tag}:1", 2), (f"{tag}:2", 2), (f"{tag}:END", 2)])
        assert w2.call("status")["incoming"] == []
        assert [e["session_present"] for e in _events(w2, "on_connected")] == [True]
        w2.call("disconnect")

    conn2 = proxy.packets(conn=2)
    # [MQTT-4.4.0-1] the broker resent the PUBLISH (DUP=1, same id) of in:1 and the PUBREL of in:2
    resent = [r for r in conn2 if r.direction == "s2c" and r.type == "PUBLISH"
              and r.payload == f"{tag}:1".encode()]
    assert resent and all(r.dup and r.packet_id == id1 for r in resent), proxy.log_text()
    assert not [r for r in conn2 if r.direction == "s2c" and r.type == "PUBLISH"
                and r.payload == f"{tag}:2".encode()]
    for pid in (id1, id2):
        assert [r for r in conn2 if r.direction == "s2c" and r.type == "PUBREL" and r.packet_id == pid]
        assert [r for r in conn2 if r.direction == "c2s" and r.type == "PUBCOMP" and r.packet_id == pid]


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_broker_back_from_an_older_save_reuses_a_held_id(
    mosquitto_factory: Any, mqtt_proxy_factory: Any, tmp_path: Any, protocol: int
) -> None:
    """mosquitto killed and back from its last save keeps the session but not a QoS 2 flow
    whose PUBREL the subscriber never got; its next QoS 2 message takes the same packet id.
    Both messages are delivered, once each (before: the new one was taken for a resend of the
    held one and never delivered)."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    from mqttsession import Client  # noqa: PLC0415

    broker = mosquitto_factory("mosquitto-persist.conf")
    proxy = mqtt_proxy_factory(broker)
    got: list[bytes] = []
    present: list[bool] = []
    sub = Client(client_id=unique("stale"), clean_session=False, protocol_version=protocol)
    sub.config(f"SessionStateFile={tmp_path / 'sub'}")
    sub.config("ReconnectDelayMax=0.5")
    if protocol == 5:
        sub.config("SessionExpInterval=600")
    sub.restore_session("")
    sub.on_message_in = lambda e: got.append(e.message)
    sub.on_connected = lambda e: present.append(e.session_present)
    subscribed = threading.Event()
    sub.on_subscribed = lambda e: subscribed.set()
    try:
        sub.connect(proxy.host, proxy.port, timeout=10)
        sub.subscribe("stale/t", 2)
        assert subscribed.wait(10)
        os.kill(broker.pid, signal.SIGUSR1)  # its save: the session, no flow yet
        deadline = time.monotonic() + 10
        while not (broker.persistence_dir / "mosquitto.db").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proxy.drop("s2c", "PUBREL")  # M1's flow stays open at the subscriber
        _procs.publish_direct(broker.host, broker.port, "stale/t", [(2, "M1")], protocol)
        first = proxy.wait_for("s2c", "PUBREL", predicate=lambda r: r.dropped)
        assert [m.packet_id for m in sub.incoming_messages] == [first.packet_id]
        broker.restart(kill=True)  # back to its last save: M1's flow forgotten
        proxy.clear_drops()
        deadline = time.monotonic() + 20
        while not (sub.connected and len(present) >= 2):
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.05)
        assert present[-1] is True
        _procs.publish_direct(broker.host, broker.port, "stale/t", [(2, "M2")], protocol)
        again = proxy.wait_for("s2c", "PUBLISH", predicate=lambda r: r.payload == b"M2")
        assert again.packet_id == first.packet_id  # (what the test is about)
        deadline = time.monotonic() + 10
        while sorted(got) != [b"M1", b"M2"]:
            assert time.monotonic() < deadline, f"delivered {got}"
            time.sleep(0.05)
        time.sleep(0.3)
        assert sorted(got) == [b"M1", b"M2"]
    finally:
        sub.close()

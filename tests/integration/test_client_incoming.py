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

"""Publishing before the first connect: the messages wait in the session, survive a save in one
process and a restore in a NEW process, and go out on connect, in order [MQTT-4.6.0-1], each as a
first send (DUP=0, the packet id they were given at publish time), and arrive exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from mqttsession import load_state

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

number_of, qos_of, unique = _procs.number_of, _procs.qos_of, _procs.unique

pytestmark = pytest.mark.integration

NUMBERS = list(range(1, 7))


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_published_before_first_connect_survive_restore_and_go_out_in_order(
    mosquitto: Any, mqtt_proxy_factory: Any, protocol: int
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("offline")
    topic = f"mqs/{tag}"
    client_id = unique("gw")
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic, protocol)
    try:
        with _procs.Worker("process-1") as w1:
            w1.call("new", client_id=client_id, clean_session=False, protocol_version=protocol)
            ids = [w1.call("publish", topic=topic, qos=qos_of(n), message=_procs.payload(tag, n))
                   for n in NUMBERS]
            assert all(ids) and len(set(ids)) == len(ids)  # QoS>0: a real packet id each
            status = w1.call("status")
            assert status["connected"] is False
            assert [number_of(tag, m["message"]) for m in status["outgoing"]] == NUMBERS
            assert [m["packet_id"] for m in status["outgoing"]] == ids
            assert not any(m["duplicate"] for m in status["outgoing"])  # never sent
            saved = w1.call("save")
            w1.exit()
        assert proxy.accepted == 0  # process 1 never connected

        view = load_state(saved)
        assert [number_of(tag, m.payload) for m in view.never_sent] == NUMBERS
        assert view.in_flight == ()

        with _procs.Worker("process-2") as w2:
            w2.call("new", client_id=client_id, clean_session=False, protocol_version=protocol)
            w2.call("restore", state=saved)
            assert [m["packet_id"] for m in w2.call("status")["outgoing"]] == ids
            w2.call("connect", port=proxy.port)
            assert w2.call("flush") is True
            w2.call("publish", topic=topic, qos=2, message=f"{tag}:END")
            counter.wait_payload(f"{tag}:END")
            events = w2.call("events")
            w2.call("disconnect")

        counts = counter.counts(tag)
        assert all(counts[n] == 1 for n in NUMBERS), counts  # never sent before: exactly once
        # paho hands QoS 2 over a round trip later than QoS 1, so the subscriber's order holds
        # per QoS; the client's own order is checked on the wire below
        order = counter.order(tag)
        for q in (1, 2):
            assert [n for n in order if qos_of(n) == q] == [n for n in NUMBERS if qos_of(n) == q]
        pubs = [r for r in proxy.packets("c2s", "PUBLISH")
                if number_of(tag, r.payload or b"") is not None]
        assert [number_of(tag, r.payload or b"") for r in pubs] == NUMBERS
        assert [r.packet_id for r in pubs] == ids
        assert not any(r.dup for r in pubs)
        assert [r.qos for r in pubs] == [qos_of(n) for n in NUMBERS]
        # the broker had no session for this id (SessionPresent=0), and no broker ever had
        # this one: nothing was lost (a hunt: on_session_lost said so, "queued" all six)
        assert not [e for e in events if e["event"] == "on_session_lost"], events
    finally:
        counter.close()

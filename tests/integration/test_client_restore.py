"""The acceptance proof (issue 3): a session saved in one process and restored in a NEW process
loses nothing, on the real brokers, through both documented IPWorks restore procedures.

Setup of every test: an independent plain paho-mqtt subscriber (``_procs.Counter``) connected
straight to the broker counts deliveries by message number; the mqttsession client runs in a child
process (``_procs.Worker``) and talks to the broker through ``MQTTProxy``, which logs every packet
(dup flag, packet id) and drops the ones we tell it to, to hold messages in flight.

Process 1 publishes numbered messages, alternating QoS 1 (odd) and QoS 2 (even):

====  ===  ==========================================  ==================================
 n    QoS  what the proxy does                          state at save time
====  ===  ==========================================  ==================================
1-4   1/2  nothing                                      acknowledged, gone
5,6   1/2  drops the PUBLISH (the broker never has it)   await_puback / await_pubrec
7,8   1/2  drops the PUBACK / PUBREC (the broker has it) await_puback / await_pubrec
9     1    nothing                                      acknowledged, gone
10    2    drops the PUBCOMP (PUBREL was sent)           await_pubcomp (released)
11,12 1/2  published after the connection was cut        queued (never sent)
====  ===  ==========================================  ==================================

then saves the session and dies without a DISCONNECT (``os._exit``). Process 2 restores it, by

* procedure (a) "server state unknown": clean_session False, connect(), and in on_connected read
  ``config("SessionPresent")`` and call ``restore_session(saved)`` from inside the callback;
* procedure (b) "server state known": ``restore_session(saved)``, then connect();

publishes 13 and 14, and everything must arrive: every QoS 1 at least once, every QoS 2 exactly
once. On the wire: the resent PUBLISH carries DUP=1 and its original packet id [MQTT-4.4.0-1]
[MQTT-3.3.1-1]; message 10 is resumed with PUBREL only, its PUBLISH is never sent again
[MQTT-4.3.3-6]; resends go out in the original order [MQTT-4.6.0-1]; new packet ids never collide
with restored ones.

The same proof runs through ``SessionStateFile`` with process 1 SIGKILLed before any
save_session() (the file alone carries the session), and test_packet_ids_after_restore_never_collide
holds restored flows open while new SUBSCRIBE and PUBLISH ids are handed out.

amqtt 0.12.1 (MQTT 3.1.1 only) gets the same client-to-broker proof: it accepts the DUP resend and
dedupes a QoS 2 PUBLISH resent with its original packet id, also across a reconnect. What amqtt
cannot do: answer a PUBREL for a flow it already finished (no PUBCOMP, against [MQTT-4.3.3-2]),
and the broker-to-client half: it never resends unacknowledged PUBLISH or PUBREL to a
reconnecting client (BROKERS.md bug 2, Yakifo/amqtt#391/#401), so the incoming-QoS-2 resume test
(test_client_incoming.py) runs on mosquitto only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import load_state
from mqttsession.testing.proxy import MQTTProxy, PacketRecord

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

Counter, Worker = _procs.Counter, _procs.Worker
assert_delivered, number_of, payload = _procs.assert_delivered, _procs.number_of, _procs.payload
qos_of, unique = _procs.qos_of, _procs.unique

pytestmark = pytest.mark.integration

PROCEDURES = {
    "a": "on_connected",  # IPWorks procedure 1: restore from inside on_connected
    "b": "restore_first",  # IPWorks procedure 2: restore_session, then connect
}

RESTORED = [5, 6, 7, 8, 10, 11, 12]  # what the saved session holds, in publish order
NEW = [13, 14]  # published by process 2
ALL = list(range(1, 15))


def _pub(w: Worker, topic: str, tag: str, n: int) -> int:
    pid: int = w.call("publish", topic=topic, qos=qos_of(n), message=payload(tag, n))
    return pid


def _records_for(proxy: MQTTProxy, conn: int) -> list[PacketRecord]:
    return [r for r in proxy.packets("c2s", conn=conn) if r.type in ("PUBLISH", "PUBREL")]


def _out_events(w: Worker, name: str) -> list[dict[str, Any]]:
    return [e for e in w.call("events") if e["event"] == name]


def save_with_messages_in_flight(
    proxy: MQTTProxy, client_id: str, topic: str, tag: str, protocol: int,
    state_file: Path | None = None,
) -> tuple[str, dict[int, int]]:
    """Process 1 (see the module docstring). Returns the saved text and {n: packet id} on conn 1.

    With ``state_file``, process 1 never calls save_session(): it dies with the session only in
    the durable file (snapshot + journal), and the text returned is what a copy of that file
    restores to (read with the public API from a copy, so the original stays untouched).
    Process 1 is SIGKILLed then, not ended with os._exit."""
    configs = ["AutoReconnect=False"]  # stay down after the cut: 11 and 12 must be queued
    if state_file is not None:
        configs.append(f"SessionStateFile={state_file}")
    if protocol == 5:
        configs.append("SessionExpInterval=600")  # [MQTT-3.1.2-23] the broker keeps the session
    with Worker("process-1") as w1:
        w1.call("new", client_id=client_id, clean_session=False, protocol_version=protocol,
                config=configs)
        w1.call("connect", port=proxy.port)
        ids: dict[int, int] = {}
        for n in range(1, 5):
            ids[n] = _pub(w1, topic, tag, n)
        assert w1.call("flush") is True

        proxy.drop("c2s", "PUBLISH", count=2)
        for n in (5, 6):
            ids[n] = _pub(w1, topic, tag, n)
        proxy.wait_for("c2s", "PUBLISH", predicate=lambda r: r.dropped, count=2)

        proxy.drop("s2c", "PUBACK", "PUBREC")
        for n in (7, 8):
            ids[n] = _pub(w1, topic, tag, n)
        proxy.wait_for("s2c", "PUBACK", predicate=lambda r: r.dropped and r.packet_id == ids[7])
        proxy.wait_for("s2c", "PUBREC", predicate=lambda r: r.dropped and r.packet_id == ids[8])

        proxy.clear_drops()
        proxy.drop("s2c", "PUBCOMP")
        for n in (9, 10):
            ids[n] = _pub(w1, topic, tag, n)
        # the client wrote PUBREL for 10 only after recording "released" [MQTT-4.3.3-6]
        proxy.wait_for("c2s", "PUBREL", predicate=lambda r: r.packet_id == ids[10])
        proxy.wait_for("s2c", "PUBCOMP", predicate=lambda r: r.dropped and r.packet_id == ids[10])
        w1.call("wait_event", event="on_message_out", count=5)  # 1-4 and 9
        done = {e["packet_id"] for e in _out_events(w1, "on_message_out")}
        assert done == {ids[n] for n in (1, 2, 3, 4, 9)}

        assert proxy.cut() == 1
        proxy.clear_drops()
        w1.call("wait_disconnected")
        for n in (11, 12):
            ids[n] = _pub(w1, topic, tag, n)
        status = w1.call("status")
        assert [number_of(tag, m["message"]) for m in status["outgoing"]] == RESTORED
        if state_file is None:
            saved: str = w1.call("save")
            w1.exit()  # dies without DISCONNECT: the saved text is all that is left of the session
            return saved, ids
        w1.kill()  # SIGKILL: no DISCONNECT, no save_session(): the file is all that is left
    return _read_state_file_copy(state_file, client_id, protocol), ids


def _read_state_file_copy(state_file: Path, client_id: str, protocol: int) -> str:
    copy_dir = state_file.parent / "inspect"
    copy_dir.mkdir()
    for suffix in ("", ".journal"):
        src = Path(f"{state_file}{suffix}")
        if src.exists():
            shutil.copyfile(src, copy_dir / (state_file.name + suffix))
    c = mqttsession.Client(client_id=client_id, protocol_version=protocol)
    c.config(f"SessionStateFile={copy_dir / state_file.name}")
    try:
        c.restore_session("ignored")
        return c.save_session()
    finally:
        c.close()


def check_saved(saved: str, tag: str, ids: dict[int, int], client_id: str, protocol: int) -> None:
    view = load_state(saved)
    assert view.client_id == client_id
    assert view.protocol_version == protocol
    phases = {number_of(tag, m.payload): (m.phase.value, m.packet_id, m.qos) for m in view.outgoing}
    assert phases == {
        5: ("await_puback", ids[5], 1),
        6: ("await_pubrec", ids[6], 2),
        7: ("await_puback", ids[7], 1),
        8: ("await_pubrec", ids[8], 2),
        10: ("await_pubcomp", ids[10], 2),
        11: ("queued", ids[11], 1),
        12: ("queued", ids[12], 2),
    }
    assert [number_of(tag, m.payload) for m in view.outgoing] == RESTORED  # in publish order


def restore_in_new_process(
    proxy: MQTTProxy, client_id: str, topic: str, tag: str, protocol: int, procedure: str,
    saved: str, counter: Counter, stale_pubrel_answered: bool = True,
    state_file: Path | None = None,
) -> dict[int, int]:
    """Process 2: restore by ``procedure``, publish 13 and 14, finish everything.

    With ``state_file``, restore_session gets a dummy string: the file must be read instead."""
    restored = load_state(saved).outgoing
    restored_ids = {m.packet_id for m in restored}
    configs = ["SessionExpInterval=600"] if protocol == 5 else []
    if state_file is not None:
        configs.append(f"SessionStateFile={state_file}")
        saved = "ignored: SessionStateFile is set"
    new_ids: dict[int, int] = {}
    with Worker("process-2") as w2:
        w2.call("new", client_id=client_id, clean_session=False, protocol_version=protocol,
                config=configs)
        if procedure == "a":
            w2.call("connect", port=proxy.port, restore_in_on_connected=saved)
            status = w2.call("status")
            assert status["in_connected"] == [{"SessionPresent": "True", "restored": True}]
            connected = _out_events(w2, "on_connected")
            assert [e["session_present"] for e in connected] == [True]
            for n in NEW:
                new_ids[n] = _pub(w2, topic, tag, n)
        else:
            w2.call("restore", state=saved)
            status = w2.call("status")
            assert status["clean_session"] is False  # restore_session sets it False
            assert [number_of(tag, m["message"]) for m in status["outgoing"]] == RESTORED
            # published while the restored messages are held: ids must go around them (PEERS 1)
            for n in NEW:
                new_ids[n] = _pub(w2, topic, tag, n)
            assert not set(new_ids.values()) & restored_ids
            w2.call("connect", port=proxy.port)
            connected = _out_events(w2, "on_connected")
            assert [e["session_present"] for e in connected] == [True]
        if stale_pubrel_answered:
            assert w2.call("flush") is True, w2.call("status")
            assert w2.call("status")["outgoing"] == []
        else:
            # amqtt ignores a PUBREL whose flow it already finished ("Received PUBREL for unknown
            # pending message"), against [MQTT-4.3.3-2]: message 10 (delivered once, see below)
            # stays awaiting a PUBCOMP that never comes. Everything else completes.
            _procs.wait_until(
                lambda: [number_of(tag, m["message"]) for m in w2.call("status")["outgoing"]]
                == [10], what="all but message 10 acknowledged")
            id10 = next(m.packet_id for m in restored if number_of(tag, m.payload) == 10)
            assert [r for r in proxy.packets("c2s", "PUBREL", conn=2) if r.packet_id == id10]
            assert not [r for r in proxy.packets("s2c", "PUBCOMP", conn=2) if r.packet_id == id10]
        completed = {number_of(tag, e["message"]) for e in _out_events(w2, "on_message_out")}
        expected = [n for n in RESTORED + NEW if stale_pubrel_answered or n != 10]
        missing = [n for n in expected if n not in completed]
        assert not missing, f"restored/new messages never completed in process 2: {missing}"
        assert _out_events(w2, "on_session_lost") == []
        # a barrier (QoS 2, see Counter.wait_payload): once it arrives, all before it has
        w2.call("publish", topic=topic, qos=2, message=f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        w2.call("disconnect")
    return new_ids


def check_wire(proxy: MQTTProxy, tag: str, ids: dict[int, int], new_ids: dict[int, int]) -> None:
    conn1 = _records_for(proxy, 1)
    conn2 = _records_for(proxy, 2)
    first_pub = {}
    for r in conn1:
        if r.type == "PUBLISH" and (n := number_of(tag, r.payload or b"")) is not None:
            first_pub.setdefault(n, r)
    for n in (5, 6, 7, 8):
        assert first_pub[n].packet_id == ids[n] and not first_pub[n].dup
    by_id = {ids[n]: n for n in RESTORED}

    seen: list[int] = []
    for r in conn2:
        if r.type == "PUBLISH":
            n = number_of(tag, r.payload or b"")
            if n is None:
                continue
        else:
            n = by_id.get(r.packet_id or -1)
            if n is None or n in NEW:
                continue
        if n not in seen:
            seen.append(n)
    # [MQTT-4.6.0-1] resent (and queued) in the original order, new messages after them
    assert seen == RESTORED + NEW, proxy.log_text()

    for n in (5, 6, 7, 8):
        resent = [r for r in conn2 if r.type == "PUBLISH" and number_of(tag, r.payload or b"") == n]
        # [MQTT-4.4.0-1] original packet id, [MQTT-3.3.1-1] DUP=1
        assert resent and all(r.dup and r.packet_id == ids[n] for r in resent), proxy.log_text()
    # [MQTT-4.3.3-6] 10 was past PUBREC: PUBREL with its id, never its PUBLISH again
    assert not [r for r in conn2 if r.type == "PUBLISH" and number_of(tag, r.payload or b"") == 10]
    assert [r.packet_id for r in conn2 if r.type == "PUBREL" and r.packet_id == ids[10]]
    for n in (11, 12):  # never sent before: a first PUBLISH, DUP=0
        sent = [r for r in conn2 if r.type == "PUBLISH" and number_of(tag, r.payload or b"") == n]
        assert len(sent) == 1 and not sent[0].dup and sent[0].packet_id == ids[n]
    new_on_wire = {r.packet_id for r in conn2
                   if r.type == "PUBLISH" and number_of(tag, r.payload or b"") in NEW}
    assert new_on_wire == set(new_ids.values())
    assert not new_on_wire & {ids[n] for n in RESTORED}, "a new packet id collides with a restored one"


def run_restore_proof(
    broker: Any, proxy: MQTTProxy, protocol: int, procedure: str, stale_pubrel_answered: bool = True,
    state_file: Path | None = None,
) -> None:
    tag = unique("out")
    topic = f"mqs/{tag}"
    client_id = unique("gw")
    counter = Counter(broker.host, broker.port, topic, protocol)
    try:
        saved, ids = save_with_messages_in_flight(proxy, client_id, topic, tag, protocol, state_file)
        check_saved(saved, tag, ids, client_id, protocol)
        new_ids = restore_in_new_process(proxy, client_id, topic, tag, protocol, procedure, saved,
                                         counter, stale_pubrel_answered, state_file)
        counter.wait_numbers(tag, ALL, timeout=15)  # END is no strict barrier
        counts = counter.counts(tag)
        assert_delivered(counts, ALL)
        check_wire(proxy, tag, ids, new_ids)
    finally:
        counter.close()


@pytest.mark.parametrize("procedure", sorted(PROCEDURES), ids=lambda p: PROCEDURES[p])
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_restore_in_new_process_loses_nothing_mosquitto(
    mosquitto: Any, mqtt_proxy_factory: Any, protocol: int, procedure: str
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    run_restore_proof(mosquitto, proxy, protocol, procedure)


@pytest.mark.crash
@pytest.mark.parametrize("procedure", sorted(PROCEDURES), ids=lambda p: PROCEDURES[p])
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_restore_from_state_file_after_crash_loses_nothing_mosquitto(
    mosquitto: Any, mqtt_proxy_factory: Any, protocol: int, procedure: str, tmp_path: Path
) -> None:
    """The same proof through ``SessionStateFile``: process 1 never calls save_session() and is
    SIGKILLed with the session only in the durable file ("kept current after EVERY state
    change"); process 2 sets the same file and calls restore_session("ignored") by procedure
    (a), from inside on_connected, or (b), before connect()."""
    proxy = mqtt_proxy_factory(mosquitto)
    run_restore_proof(mosquitto, proxy, protocol, procedure, state_file=tmp_path / "gw.state")


@pytest.mark.parametrize("procedure", sorted(PROCEDURES), ids=lambda p: PROCEDURES[p])
def test_restore_in_new_process_loses_nothing_amqtt(
    amqtt_broker: Any, mqtt_proxy_factory: Any, procedure: str
) -> None:
    """amqtt: the client-to-broker half works: SessionPresent=1, the DUP resends with original ids
    are accepted, QoS 2 resends (6 and 8) are deduped, so the subscriber gets each QoS 2 once.

    What amqtt cannot do:
    * answer the resumed PUBREL of message 10 (its flow was finished before the save): amqtt drops
      a PUBREL for an unknown packet id without the PUBCOMP [MQTT-4.3.3-2] requires, so 10 stays
      in ``outgoing_messages`` awaiting PUBCOMP (it was delivered once, before the save);
    * the broker-to-client half: amqtt never resends its own unacknowledged PUBLISH or PUBREL to a
      reconnecting client (BROKERS.md bug 2, Yakifo/amqtt#391/#401), so the incoming-QoS-2 resume
      (test_client_incoming.py) runs on mosquitto only.
    """
    proxy = mqtt_proxy_factory(amqtt_broker)
    run_restore_proof(amqtt_broker, proxy, 4, procedure, stale_pubrel_answered=False)


def test_packet_ids_after_restore_never_collide(mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """PEERS.md pain 1: after a restore, a fresh paho connection (its own id counter back at 1)
    and new publishes must go around the restored ids still in flight, and around each other:
    SUBSCRIBE ids avoid held PUBLISH ids, new PUBLISH ids avoid held and in-flight SUBSCRIBE ids
    [MQTT-2.3.1-2]. Then everything completes after a cut, nothing lost."""
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("ids")
    topic = f"mqs/{tag}"
    client_id = unique("gw")
    counter = Counter(mosquitto.host, mosquitto.port, topic)
    c1 = mqttsession.Client(client_id=client_id, clean_session=False)
    c1.config("AutoReconnect=False")
    c2 = mqttsession.Client(client_id=client_id, clean_session=False)
    log2 = _procs.EventLog(c2)
    try:
        c1.connect(proxy.host, proxy.port)
        proxy.drop("c2s", "PUBLISH")  # none reaches the broker: all six stay in flight
        held = [_pub_inproc(c1, topic, tag, n) for n in range(1, 7)]
        proxy.wait_for("c2s", "PUBLISH", predicate=lambda r: r.dropped, count=6)
        saved = c1.save_session()
        assert proxy.cut() == 1
        c1.close()
        proxy.clear_drops()
        assert sorted(m.packet_id for m in load_state(saved).in_flight) == sorted(held)

        c2.restore_session(saved)
        proxy.drop("s2c", "PUBACK", "PUBREC", "SUBACK")  # keep every flow of conn 2 open
        c2.connect(proxy.host, proxy.port)
        proxy.wait_for("c2s", "PUBLISH", predicate=lambda r: r.conn == 2 and r.dup, count=6)
        for i in range(3):
            c2.subscribe(f"{topic}/s{i}", 1)
        proxy.wait_for("c2s", "SUBSCRIBE", predicate=lambda r: r.conn == 2, count=3)
        sub_ids = [r.packet_id for r in proxy.packets("c2s", "SUBSCRIBE", conn=2)]
        assert len(set(sub_ids)) == 3 and not set(sub_ids) & set(held), (sub_ids, held)
        new = [_pub_inproc(c2, topic, tag, n) for n in (7, 8)]
        assert not set(new) & (set(held) | set(sub_ids)), (new, held, sub_ids)
        assert len({m.packet_id for m in c2.outgoing_messages}) == 8

        proxy.clear_drops()
        assert proxy.cut() == 1  # auto-reconnect: everything is resent and completes
        log2.wait("on_connected", 2)
        assert c2.flush(_procs.TIMEOUT), c2.outgoing_messages
        c2.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        counter.wait_numbers(tag, range(1, 9), timeout=15)  # END is no strict barrier
        assert_delivered(counter.counts(tag), range(1, 9))
    finally:
        c1.close()
        c2.close()
        counter.close()


def _pub_inproc(c: Any, topic: str, tag: str, n: int) -> int:
    pid: int = c.publish_message(topic, qos_of(n), payload(tag, n))
    return pid


# ----------------------------------------------------- the client id of a session with a file


def _file_client(path: Path, cid: str) -> mqttsession.Client:
    c = mqttsession.Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    return c


def test_client_id_cannot_change_once_the_file_is_open(tmp_path: Path) -> None:
    """Renaming a restored session left files neither id could open (the journal said one,
    the disk queue's segments the other: 11 messages stranded, a defect hunt); it is refused
    once the file is open, and the file keeps its session."""
    path = tmp_path / "s"
    c = _file_client(path, "A")
    c.config("QueueInMemory=2")
    c.client_id = "A2"  # before the file is opened: fine
    c.client_id = "A"
    c.restore_session("")
    for i in range(5):
        c.publish_data("t", 1, f"m{i}".encode())
    with pytest.raises(mqttsession.UsageError, match="holds client id 'A'"):
        c.client_id = "B"
    c.client_id = "A"  # the same id: no change
    c.close()
    again = _file_client(path, "A")
    again.restore_session("")
    assert len(again.outgoing_messages) == 5
    again.close()


def test_a_refused_restore_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A file whose journal renamed its session (as an earlier version let a Client do): the
    restore is refused (StateError), and ``close()`` then wrote the client's empty session over
    it: 4 held QoS 1 messages gone (a defect hunt). The session now waits, not taken."""
    path = tmp_path / "s"
    c = _file_client(path, "A")
    c.restore_session("")
    for i in range(4):
        c.publish_data("t", 1, f"m{i}".encode())
    st = c._engine.state  # noqa: SLF001 - the rename an earlier version recorded
    c._file.append([st.configure(client_id="B")], st)  # noqa: SLF001
    del c  # killed: nothing compacted
    from mqttsession.journal import read_state

    before = len(read_state(str(path)).outgoing)
    again = _file_client(path, "A")
    with pytest.raises(mqttsession.StateError, match="belongs to client id 'B'"):
        again.restore_session("")
    again.close()
    assert before == 4 and len(read_state(str(path)).outgoing) == 4


def test_a_text_ignored_for_the_state_file_is_reported(tmp_path: Path) -> None:
    """``restore_session(text)`` with a state file reads the file and ignores the text
    (API.md); a gateway's session always has one, so a session moved into a gateway by its
    ``save_session()`` text was dropped without a word (a defect hunt). It is reported."""
    src = mqttsession.Client(client_id="mv", clean_session=False)
    src.publish_data("t", 2, b"held")
    text = src.save_session()
    src.close()
    from mqttsession.gateway import Gateway

    gw = Gateway(tmp_path / "gw")
    try:
        c = gw.client("mv")
        errors: list[str] = []
        c.on_error = lambda e: errors.append(e.description)
        c.restore_session(text)
        assert [e for e in errors if "was ignored" in e], errors
        c.restore_session("")  # nothing given: nothing said
        assert len(errors) == 1
    finally:
        gw.close()


def test_mqtt5_messages_with_properties_never_go_out_as_mqtt311(tmp_path: Path) -> None:
    """A session holding an MQTT 5 message with properties (a Message Expiry Interval,
    Correlation Data), restored by a client left at the default protocol_version=4: the
    expired message was sent, its properties dropped without a word (a hunt). Such a restore
    is ``StateError`` (the file kept), and so is switching a client that holds them to 4."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = 2
    # in memory; and (a review) in the disk queue, behind a plain one
    for name, in_memory, held in (("s", 1000, [b"short-lived"]),
                                  ("b", 1, [b"plain", b"in the disk queue"])):
        c = mqttsession.Client(client_id=f"v5{name}", clean_session=False, protocol_version=5)
        c.config(f"SessionStateFile={tmp_path / name}")
        c.config(f"QueueInMemory={in_memory}")
        c.restore_session("")
        for i, payload in enumerate(held):
            c.publish_data("t", 1, payload, properties=props if i == len(held) - 1 else None)
        with pytest.raises(mqttsession.UsageError, match="stays protocol_version=5"):
            c.protocol_version = 4
        c.close()
        v4 = _file_client(tmp_path / name, f"v5{name}")
        with pytest.raises(mqttsession.StateError, match="protocol_version=5"):
            v4.restore_session("")
        v4.close()
    path = tmp_path / "s"
    v5 = mqttsession.Client(client_id="v5s", clean_session=False, protocol_version=5)
    v5.config(f"SessionStateFile={path}")
    v5.restore_session("")
    assert [m.message for m in v5.outgoing_messages] == [b"short-lived"]
    v5.close()


def test_the_note_of_a_session_kept_aside_counts_its_disk_queue(tmp_path: Path) -> None:
    """"held a session (1 outgoing ...)" for a session of 4 messages, 3 of them in its disk
    queue (a review): the note counts them all."""
    path = tmp_path / "s"
    c = _file_client(path, "q")
    c.config("QueueInMemory=1")
    c.restore_session("")
    for i in range(4):
        c.publish_data("t", 1, f"m{i}".encode())
    c.close()
    again = _file_client(path, "q")
    again.config("QueueInMemory=1")
    errors: list[str] = []
    again.on_error = lambda e: errors.append(e.description)
    again.publish_data("t", 1, b"new")  # not restored: kept aside
    again.close()
    assert [e for e in errors if "(4 outgoing, 0 incoming messages) that was not restored" in e]

"""Sessions through a real clustered broker: two aedes nodes sharing one redis-server.

The fixture ``aedes_cluster`` starts a Debian ``redis-server`` and two aedes nodes
(``brokers/aedes/broker.js``: aedes + aedes-persistence-redis + mqemitter-redis) on free 127.0.0.1
ports and stops them by pid. What is proved here, with plain ``mqttsession.Client`` objects that
keep their sessions in state files:

* a publisher on node A and a subscriber on node B: QoS 1 and QoS 2 messages cross the cluster,
  each arrives, no QoS 2 message twice;
* a subscriber's session made on node A resumes on node B after the client disconnects and
  connects to B, while the publisher keeps publishing: SessionPresent=1 (the cluster kept the
  session in Redis), what was published while it was away is delivered, nothing is lost, no QoS 2
  duplicate. The publisher moves from B to A the same way; its session holds no subscription, so
  aedes answers SessionPresent=0 (BROKERS.md), and the client's state still loses nothing;
* (needs ``FailoverServers``, issue 14 point 1) node A is SIGKILLed mid-stream and both clients
  move to node B by themselves.

Skipped when Node.js is absent; when aedes' npm packages are missing the skip says
``npm ci --prefix brokers/aedes``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client
from mqttsession.errors import UsageError
from mqttsession.events import ConnectedEvent, MessageEvent
from mqttsession.testing.node_brokers import AedesBroker, AedesCluster

pytestmark = [pytest.mark.integration, pytest.mark.aedes]

TIMEOUT = 30.0
log = logging.getLogger(__name__)
TOPIC = "cluster/data"


def wait_until(pred: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def qos_of(n: int) -> int:
    return 1 if n % 2 else 2


class Recorder:
    """A durable client's deliveries and CONNACKs, counted by message number."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.lock = threading.Lock()
        self.counts: collections.Counter[int] = collections.Counter()
        self.qos: dict[int, int] = {}
        self.connacks: list[bool] = []

    def on_message(self, event: MessageEvent) -> None:
        text = event.message.decode()
        prefix = f"{self.tag}:"
        if text.startswith(prefix):
            n = int(text[len(prefix):])
            with self.lock:
                self.counts[n] += 1
                self.qos[n] = event.qos

    def on_connected(self, event: ConnectedEvent) -> None:
        if event.status_code == 0:
            with self.lock:
                self.connacks.append(event.session_present)

    def received(self) -> set[int]:
        with self.lock:
            return set(self.counts)

    def qos2_duplicates(self) -> list[int]:
        with self.lock:
            return sorted(n for n, c in self.counts.items() if c > 1 and qos_of(n) == 2)

    def sessions_present(self) -> list[bool]:
        with self.lock:
            return list(self.connacks)


def durable_client(client_id: str, state: Path, recorder: Recorder | None = None) -> Client:
    c = Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={state}")
    c.config("ReconnectDelayMin=0.2")
    c.config("ReconnectDelayMax=1")
    c.restore_session("")
    if recorder is not None:
        c.on_message_in = recorder.on_message
        c.on_connected = recorder.on_connected
    return c


def connect(c: Client, node: AedesBroker) -> None:
    c.connect(node.host, node.port, timeout=10)


def subscribed(c: Client, topic: str, qos: int) -> None:
    done = threading.Event()
    c.on_subscribed = lambda event: done.set()
    c.subscribe(topic, qos)
    assert done.wait(TIMEOUT), f"no SUBACK for {topic}"
    c.on_subscribed = None


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        try:
            c.close()
        except Exception:  # noqa: BLE001, S110 - the test already reported what mattered
            pass


def test_qos1_and_qos2_cross_the_cluster(aedes_cluster: AedesCluster, state_dir: Path,
                                         clients: list[Client]) -> None:
    node_a, node_b = aedes_cluster.nodes
    rec = Recorder("cross")
    sub = durable_client("cluster-sub-1", state_dir / "sub", rec)
    pub = durable_client("cluster-pub-1", state_dir / "pub")
    clients += [sub, pub]
    connect(sub, node_b)
    subscribed(sub, TOPIC, 2)
    connect(pub, node_a)
    total = 300
    for n in range(1, total + 1):
        pub.publish_message(TOPIC, qos_of(n), f"cross:{n}")
    assert pub.flush(TIMEOUT), "the publisher's messages were not all acknowledged by node A"
    wait_until(lambda: len(rec.received()) == total, f"{total} messages on node B")
    assert rec.qos2_duplicates() == []
    assert {rec.qos[n] for n in rec.received()} == {1, 2}  # delivered at the published QoS
    assert rec.sessions_present() == [False]


def test_session_made_on_one_node_resumes_on_the_other(aedes_cluster: AedesCluster, state_dir: Path,
                                                       clients: list[Client]) -> None:
    node_a, node_b = aedes_cluster.nodes
    rec = Recorder("move")
    sub = durable_client("cluster-sub-2", state_dir / "sub", rec)
    pub = durable_client("cluster-pub-2", state_dir / "pub")
    clients += [sub, pub]
    connect(sub, node_a)
    subscribed(sub, TOPIC, 2)
    connect(pub, node_b)

    total = 600
    errors: list[BaseException] = []
    middle_sent = threading.Event()
    go_middle = threading.Event()
    go_last = threading.Event()
    published = threading.Event()

    def publish() -> None:
        try:
            for n in range(1, total + 1):
                if n == 200:
                    assert go_middle.wait(TIMEOUT)  # the subscriber has left node A
                if n == 400:
                    middle_sent.set()
                    assert go_last.wait(TIMEOUT)  # the subscriber is back, on node B
                pub.publish_message(TOPIC, qos_of(n), f"move:{n}")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            middle_sent.set()
            published.set()

    worker = threading.Thread(target=publish, name="publisher", daemon=True)
    worker.start()
    wait_until(lambda: len(rec.received()) >= 150, "the first messages on node A")
    sub.disconnect()  # mid-stream; the session stays in Redis (clean_session=False)
    sub.close()
    go_middle.set()
    # while the subscriber is away, what is published for it is queued in the cluster
    assert middle_sent.wait(TIMEOUT) and not errors, errors
    assert pub.flush(TIMEOUT)

    # a new Client (as a restarted process would) from the same state file, on the OTHER node
    sub2 = durable_client("cluster-sub-2", state_dir / "sub", rec)
    clients.append(sub2)
    connect(sub2, node_b)
    go_last.set()
    assert published.wait(TIMEOUT) and not errors, errors
    worker.join(TIMEOUT)
    assert pub.flush(TIMEOUT)

    # the publisher moves too: from node B to node A, publishing while it is away
    pub.disconnect()
    for n in range(total + 1, total + 51):
        pub.publish_message(TOPIC, qos_of(n), f"move:{n}")  # waits in its session (state file)
    pub_rec = Recorder("unused")
    pub.on_connected = pub_rec.on_connected
    connect(pub, node_a)
    assert pub.flush(TIMEOUT), "the messages published while away were not all acknowledged"
    total += 50

    wait_until(lambda: len(rec.received()) == total, f"all {total} messages")
    assert rec.qos2_duplicates() == []
    # sub: new on node A, then its session found on node B (kept in Redis)
    assert rec.sessions_present() == [False, True]
    # pub: aedes 1.2 answers SessionPresent=0 for a session without subscriptions (BROKERS.md;
    # should this fail, aedes changed: update BROKERS.md); the client's state file sent what
    # waited as new messages, so nothing was lost
    assert pub_rec.sessions_present() == [False]


def _failover_supported() -> bool:
    try:
        Client().config("FailoverServers")
    except UsageError:
        return False
    return True


@pytest.mark.crash
def test_node_killed_mid_stream_clients_fail_over(aedes_cluster: AedesCluster, state_dir: Path,
                                                  clients: list[Client]) -> None:
    """Issue 14: node A SIGKILLed mid-stream, both clients move to node B by themselves.

    Both sessions are found on node B (SessionPresent=1), no QoS 2 message arrives twice, every
    QoS 1 message arrives (the publisher has ``FailoverRepublish=100``: on node B it publishes
    again the last 100 QoS 1 messages node A acknowledged), and every message published after
    the kill arrives. What aedes 1.2 loses when a node dies (seen here: 0 to 14 of the messages
    in flight at the kill, QoS 1 and 2; the likely mechanism, from aedes' source): a QoS 1
    message it had
    already PUBACKed (aedes acknowledges QoS 1 before it queues the message for the
    subscriptions), and a QoS 2 PUBLISH it had stored (``incomingStorePacket``) but not yet queued
    (``enqueueOffline``; the Redis writes are pipelined): the client resends that one to node B
    with DUP=1 and the same packet id, as it must with SessionPresent=1, and node B, finding the
    packet id in Redis, takes it for a duplicate ("just send PUBREC, don't publish again",
    aedes lib/handlers/publish.js) and never delivers it. The QoS 1 loss is repaired by
    ``FailoverRepublish`` (QoS 1 allows the duplicates it makes); the QoS 2 one is not the
    client's to repair: a QoS 2 message published twice would be delivered twice (BROKERS.md).
    The test holds the QoS 2 loss to what was published before the kill. A third kind was
    held, not lost: a QoS 2 message node A sent the subscriber, which answered PUBREC, and node
    A died before its PUBREL: node B never sends that PUBREL (nor the PUBLISH again)
    [MQTT-4.3.3]. Packet captures (MQTTProxy in front of both nodes) showed all three. The
    subscriber, which found its session on B, delivers those at the move (``Engine.
    _deliver_unreleased``): none is left undelivered at the end.
    """
    if not _failover_supported():
        pytest.skip("Client has no FailoverServers setting yet (issue 14 point 1, another branch)")
    node_a, node_b = aedes_cluster.nodes
    servers = node_b.address  # tried after connect()'s own server (node A), in turn
    rec = Recorder("failover")
    pub_rec = Recorder("unused")
    sub = durable_client("cluster-sub-3", state_dir / "sub", rec)
    pub = durable_client("cluster-pub-3", state_dir / "pub", pub_rec)
    clients += [sub, pub]
    for c in (sub, pub):
        c.config(f"FailoverServers={servers}")
    pub.config("FailoverRepublish=100")
    connect(sub, node_a)
    subscribed(sub, TOPIC, 2)
    connect(pub, node_a)
    # a subscription keeps aedes reporting the publisher's session (SessionPresent=1 on node B):
    # its unacknowledged QoS 2 messages are then resent with their ids, not republished as new
    subscribed(pub, "cluster/keep-session/cluster-pub-3", 1)

    total, kill_at = 600, 200
    for n in range(1, total + 1):
        if n == kill_at:
            wait_until(lambda: len(rec.received()) >= 100, "the first messages through node A")
            node_a.kill()  # SIGKILL: no clean close, in-flight flows cut
        pub.publish_message(TOPIC, qos_of(n), f"failover:{n}")
    assert pub.flush(60), "the publisher did not finish on node B"
    everything = set(range(1, total + 1))
    # wait for all, or for everything but the QoS 2 messages aedes can lose (see above)
    try:
        wait_until(lambda: all(n < kill_at and qos_of(n) == 2
                               for n in everything - rec.received()),
                   "every QoS 1 message, and every message published after the kill",
                   timeout=60)
    except AssertionError as exc:
        held = sorted(m.message.decode() for m in sub.incoming_messages)
        raise AssertionError(f"{exc}; missing: {sorted(everything - rec.received())}; held by the"
                             f" subscriber awaiting PUBREL: {held}; SessionPresent: sub"
                             f" {rec.sessions_present()}, pub {pub_rec.sessions_present()}") from None
    log.info("aedes lost at the node kill: %s", sorted(everything - rec.received()))
    # none waits, undelivered, for a PUBREL node B never sends: what the subscriber still
    # holds (an id until that PUBREL) the application has taken
    held = {int(m.message.decode().split(":")[1]) for m in sub.incoming_messages}
    assert held <= rec.received(), f"held, never delivered: {sorted(held - rec.received())}"
    assert rec.qos2_duplicates() == []
    assert rec.sessions_present() == [False, True]  # the subscriber's session, found on node B
    assert pub_rec.sessions_present() == [False, True]


@pytest.mark.crash
def test_publisher_process_killed_on_node_a_restarted_against_node_b(
        aedes_cluster: AedesCluster, state_dir: Path, clients: list[Client]) -> None:
    """The publisher process is SIGKILLed mid-stream on node A; a new process restores its state
    file and connects to node B. Its session holds a subscription, so aedes reports
    SessionPresent=1 (for a session without one it answers 0, BROKERS.md), the client resends its
    unacknowledged messages with their packet ids, and the cluster dedupes QoS 2 across nodes:
    nothing lost, no QoS 2 duplicate."""
    try:  # tests/integration may or may not be a package
        from . import _procs
    except ImportError:  # pragma: no cover - rootdir-relative import
        import _procs  # type: ignore[no-redef]

    node_a, node_b = aedes_cluster.nodes
    rec = Recorder("killed")
    sub = durable_client("cluster-sub-4", state_dir / "sub", rec)
    clients.append(sub)
    connect(sub, node_b)
    subscribed(sub, TOPIC, 2)

    total = 400
    state = state_dir / "pub"
    # paced (100 a second, a bucket of one second's): the kill lands mid-stream also on a fast,
    # idle machine. At 400 a second the bucket filled while the client sat connected held the
    # whole stream, which then went at once (it was sometimes over before the kill: nothing proved)
    settings = [f"SessionStateFile={state}", "DrainRateLimit=100"]
    with _procs.Worker("publisher-1") as w1:
        w1.call("new", client_id="cluster-pub-4", clean_session=False, config=settings)
        w1.call("restore", state="")
        w1.call("connect", port=node_a.port)
        w1.call("subscribe", topic="cluster/keep-session/cluster-pub-4", qos=1)
        w1.call("wait_event", event="on_subscribed")
        w1.call("publish_many", topic=TOPIC,
                messages=[[qos_of(n), f"killed:{n}"] for n in range(1, total + 1)])
        wait_until(lambda: len(rec.received()) >= 50, "the first messages through node A")
        w1.kill()  # SIGKILL mid-stream
    assert len(rec.received()) < total, "the stream was over before the kill; nothing proved"

    with _procs.Worker("publisher-2") as w2:
        w2.call("new", client_id="cluster-pub-4", clean_session=False, config=settings)
        w2.call("restore", state="")
        held = w2.call("status")["outgoing"]
        assert held, "the killed publisher's state file held nothing: nothing proved"
        w2.call("connect", port=node_b.port)
        assert w2.call("flush", timeout=TIMEOUT) is True
        events = w2.call("events")
        assert [e["session_present"] for e in events if e["event"] == "on_connected"] == [True]
        assert not [e for e in events if e["event"] == "on_session_lost"]
        w2.call("disconnect")

    wait_until(lambda: len(rec.received()) == total, f"all {total} messages")
    assert rec.qos2_duplicates() == []

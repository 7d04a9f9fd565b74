"""Session scenarios run against a real broker with raw packets, and how they are run.

Each scenario uses its own client ids and topics (random suffix), checks one spec statement,
and reports ``pass``, ``FAIL`` with a one-line reason, or ``n/a``; it never raises. Sessions it
made are removed afterwards with a clean connection. A packet an MQTT 5 broker's CONNACK forbids
(a PUBLISH above its Maximum QoS, a packet over its Maximum Packet Size) is never sent: the
scenario that needs it is ``n/a`` with that reason. Every topic is under :data:`TOPIC_ROOT`;
:func:`check_broker` makes sure the user may publish and subscribe there before anything runs.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from .raw import (
    NEVER_EXPIRES,
    BeyondServerLimit,
    ConnectionClosed,
    Packet,
    PacketType,
    RawClient,
    RawError,
    Refused,
    Timeout,
    connack_reason,
    encode_ack,
    encode_publish,
)

__all__ = [
    "SCENARIOS",
    "TOPIC_ROOT",
    "BrokerUnavailable",
    "Context",
    "Fail",
    "NotApplicable",
    "Result",
    "Scenario",
    "Status",
    "Target",
    "check_broker",
    "find_scenarios",
    "run_all",
    "run_scenario",
]

log = logging.getLogger(__name__)

PERSISTENT_EXPIRY: Final = 60
"""MQTT 5 Session Expiry Interval of "persistent" sessions: long enough for any scenario, short
enough that a session left behind (the broker went away before cleanup) goes by itself."""

_DEFAULT: Final = -1  # Context.connect: the expiry that goes with the clean flag

TOPIC_ROOT: Final = "mqttsession-compat"
"""Every topic the scenarios use is under ``TOPIC_ROOT/#`` (``TOPIC_ROOT/RANDOM/NAME``): the user
must be allowed to publish and subscribe there (:func:`check_broker` tries it first)."""


class Status(Enum):
    """A scenario's outcome."""

    PASS = "pass"
    FAIL = "fail"
    NA = "n/a"
    INFO = "info"
    """Not a check: the scenario reports what the broker does (``Result.value``)."""

    @property
    def label(self) -> str:
        return "FAIL" if self is Status.FAIL else self.value


class Fail(Exception):
    """A check failed; the message is the one-line reason."""


class NotApplicable(Exception):
    """The scenario cannot check its statement on this broker (e.g. it took QoS 2 as QoS 1,
    which another scenario reports; or its CONNACK's Maximum QoS forbids the QoS the scenario
    publishes at: ``raw.BeyondServerLimit`` counts as this); the message says why."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached, refuses the protocol, or does not let the user publish and
    subscribe under ``TOPIC_ROOT/#``: nothing can be checked."""


@dataclass(frozen=True)
class Target:
    """The broker under test and how to talk to it."""

    host: str
    port: int
    protocol: int = 4
    username: str | None = None
    password: str | None = None
    timeout: float = 3.0
    """Longest wait for a packet that should come."""
    quiet: float = 1.0
    """How long to listen before concluding that nothing (more) comes."""
    between: Callable[[], None] | None = field(default=None, compare=False)
    """Test hook: called while a resuming scenario's client is away (e.g. restart the broker)."""
    failover: tuple[str, int] | None = None
    """Another node of the same cluster (``--failover``): ``failover-resume`` resumes there."""

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for an IPv6 address)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Result:
    """One scenario's outcome against one broker."""

    name: str
    spec: str
    status: Status
    reason: str = ""
    seconds: float = 0.0
    value: str = ""
    """What an informative scenario (``Status.INFO``) found, in a word or two."""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "spec": self.spec, "status": self.status.value,
                                  "reason": self.reason, "seconds": round(self.seconds, 3)}
        if self.value:
            out["value"] = self.value
        return out


class Context:
    """What a scenario works with: client ids, topics, connections; cleans up after it."""

    def __init__(self, target: Target, scenario: str) -> None:
        self.target = target
        self.protocol = target.protocol
        self.scenario = scenario
        self.tag = secrets.token_hex(4)
        self.notes: list[str] = []
        self.flag_zero: list[str] = []
        """What ``rejoin`` got SessionPresent=0 for (the verdict is the broker's actions)."""
        self.info: tuple[str, str] | None = None
        self._client_ids: list[str] = []
        self._clients: list[RawClient] = []

    def client_id(self, role: str) -> str:
        """A fresh client id (at most 23 alphanumerics: every broker must accept it)."""
        cid = f"msc{self.tag}{role}"
        self._client_ids.append(cid)
        return cid

    def topic(self, name: str = "t") -> str:
        return f"{TOPIC_ROOT}/{self.tag}/{name}"

    def connect(self, client_id: str, *, clean: bool, expiry: int | None = _DEFAULT,
                failover: bool = False) -> RawClient:
        """A connected client. MQTT 5: ``clean=False`` asks for ``PERSISTENT_EXPIRY`` unless
        ``expiry`` is given (None leaves the property out); ``clean=True`` leaves it out.
        ``failover``: to ``Target.failover``, the other node of the cluster."""
        if expiry == _DEFAULT:
            expiry = None if clean or self.protocol == 4 else PERSISTENT_EXPIRY
        t = self.target
        host, port = t.host, t.port
        if failover:
            if t.failover is None:
                raise NotApplicable("needs --failover HOST:PORT (another node of the same cluster)")
            host, port = t.failover
        client = RawClient(host, port, protocol=self.protocol, timeout=t.timeout,
                           name=f"{self.scenario}/{client_id}{'@failover' if failover else ''}")
        self._clients.append(client)
        client.connect(client_id, clean=clean, session_expiry=expiry, username=t.username,
                       password=t.password)
        return client

    def resume(self, client_id: str, what: str = "session") -> RawClient:
        """Reconnect with a persistent session and require SessionPresent=1."""
        client = self.connect(client_id, clean=False)
        if not client.session_present:
            raise Fail(f"SessionPresent=0 on reconnect: the broker lost the {what}")
        return client

    def rejoin(self, client_id: str, what: str = "session", *, failover: bool = False) -> RawClient:
        """Reconnect with a persistent session; SessionPresent=0 does not end the scenario.

        Only the ``session-present-*`` scenarios judge the flag [MQTT-3.2.2-2] (5:
        [MQTT-3.2.2-3]): a broker that answers 0 yet kept the session (ActiveMQ 5.17 always;
        aedes 1.2 for a session without subscriptions) is judged here by what it does next. A
        scenario that then fails names the flag too (``run_scenario``), since a lost session
        explains the failure."""
        client = self.connect(client_id, clean=False, failover=failover)
        if not client.session_present:
            self.flag_zero.append(what)
        return client

    def report(self, value: str, text: str) -> None:
        """An informative scenario's finding: ``value`` for the table cell, ``text`` the reason."""
        self.info = (value, text)

    @property
    def qos2_pubacked(self) -> bool:
        """A QoS 2 PUBLISH of this scenario was answered with PUBACK."""
        return any(c.pubacked_qos2 for c in self._clients)

    def away(self) -> None:
        """The point where a resuming scenario's client is disconnected: runs the test hook."""
        if self.target.between is not None:
            log.info("%s: running the between-halves hook", self.scenario)
            self.target.between()

    def note(self, text: str) -> None:
        """Something worth reporting that does not fail the scenario."""
        self.notes.append(text)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def cleanup(self) -> None:
        """Close every connection and end every session the scenario may have left."""
        for client in self._clients:
            client.close()
        t = self.target
        for cid in dict.fromkeys(self._client_ids):
            try:
                with RawClient(t.host, t.port, protocol=self.protocol, timeout=min(t.timeout, 2.0),
                               name=f"{self.scenario}/cleanup") as c:
                    # CleanSession=1 / Clean Start=1 with interval 0: the session ends with the
                    # connection [MQTT-3.1.2-6] (5: [MQTT-3.1.2-4], 3.1.2.11.2).
                    c.connect(cid, clean=True, username=t.username, password=t.password)
                    c.disconnect(linger=0.5)
            except (RawError, OSError) as exc:
                log.debug("%s: cleanup of %s failed: %s", self.scenario, cid, exc)


ScenarioFunc = Callable[[Context], None]


@dataclass(frozen=True)
class Scenario:
    """A named check of one spec statement (ids for MQTT 3.1.1 and 5)."""

    name: str
    spec4: str
    spec5: str
    summary: str
    func: ScenarioFunc
    protocols: frozenset[int] = frozenset({4, 5})
    resumes: bool = False
    """Reconnects to a session it made: ``Target.between`` runs while its client is away."""

    def spec(self, protocol: int) -> str:
        return self.spec5 if protocol == 5 else self.spec4


# ------------------------------------------------------------------------------------------ helpers

_PUBACKED: Final = ("the broker answered the QoS 2 PUBLISH with PUBACK (QoS 2 taken as QoS 1, reported"
                    " by qos2-publish-pubrec): no QoS 2 flow to check")


def _payloads(packets: Iterable[Packet], topic: str) -> list[bytes]:
    return [p.payload for p in packets if p.type is PacketType.PUBLISH and p.topic == topic]


def _publisher(ctx: Context) -> RawClient:
    return ctx.connect(ctx.client_id("p"), clean=True)


def _publish(ctx: Context, topic: str, payload: bytes, qos: int) -> None:
    """Publish from a short-lived clean connection (nothing of it is left for ``away``)."""
    p = _publisher(ctx)
    p.publish(topic, payload, qos)
    p.disconnect()


def _granted(client: RawClient, topic: str, qos: int, *, require: bool = False) -> int:
    """SUBSCRIBE; returns the QoS granted. ``require``: NotApplicable below ``qos`` (3.8.4: a
    server may grant less than asked; delivery then uses it [MQTT-3.8.4-6] (5: [MQTT-3.8.4-8]))."""
    granted = client.subscribe(topic, qos)
    if require and granted < qos:
        raise NotApplicable(f"SUBACK granted QoS {granted} for a QoS {qos} subscription (allowed):"
                            f" no QoS {qos} delivery to check")
    return granted


def _subscribed(ctx: Context, role: str, topic: str, qos: int, *, require: bool = False) -> tuple[str, int]:
    """A persistent session subscribed to ``topic``, disconnected: its client id, granted QoS."""
    cid = ctx.client_id(role)
    c = ctx.connect(cid, clean=False)
    granted = _granted(c, topic, qos, require=require)
    c.disconnect()
    return cid, granted


def _pubrec(client: RawClient, packet_id: int) -> None:
    """The PUBREC of our raw QoS 2 PUBLISH; NotApplicable when the broker answered PUBACK."""
    if client.expect_pubrec(packet_id) is None:
        raise NotApplicable(_PUBACKED)


def _received_once(ctx: Context, sub: RawClient, topic: str, payload: bytes) -> None:
    """The subscriber gets ``payload`` exactly once within the quiet period."""
    got = _payloads(sub.drain(ctx.target.quiet), topic).count(payload)
    if got == 0:
        raise Fail("the message was not delivered at all")
    if got > 1:
        raise Fail(f"the message was delivered {got} times")


# ------------------------------------------------------------------------------------------ scenarios


def session_present_new(ctx: Context) -> None:
    # [MQTT-3.2.2-3] no stored session: SessionPresent=0
    c = ctx.connect(ctx.client_id("a"), clean=False)
    if c.session_present:
        raise Fail("SessionPresent=1 for a client id that never connected")
    c.disconnect()


def session_present_clean(ctx: Context) -> None:
    # [MQTT-3.2.2-1] (5: [MQTT-3.2.2-2]) CleanSession=1 gives SessionPresent=0, even over a session
    cid, _ = _subscribed(ctx, "a", ctx.topic(), 1)
    c = ctx.connect(cid, clean=True)
    if c.session_present:
        raise Fail("SessionPresent=1 on a CONNECT with CleanSession=1 (a session existed)")
    c.disconnect()


def session_present_resumed(ctx: Context) -> None:
    # [MQTT-3.2.2-2] (5: [MQTT-3.2.2-3]) stored session: SessionPresent=1. The one scenario that
    # judges the flag of a subscribed session; the others judge what the broker does (rejoin).
    topic = ctx.topic()
    cid, _ = _subscribed(ctx, "a", topic, 1)
    ctx.away()
    c = ctx.connect(cid, clean=False)
    if c.session_present:
        c.disconnect()
        return
    # wrong either way; the reason says whether the session was kept all the same: its
    # subscription (not sent again) still delivers
    _publish(ctx, topic, b"kept?", 1)
    if _payloads(c.drain(ctx.target.timeout, count=1), topic):
        raise Fail("SessionPresent=0 on reconnect, yet the session was kept: its subscription"
                   " delivered a message published after the reconnect")
    raise Fail("SessionPresent=0 on reconnect: the broker lost the session")


def session_present_unsubscribed(ctx: Context) -> None:
    # [MQTT-3.2.2-2] (5: [MQTT-3.2.2-3]) a session without subscriptions is stored state too
    # [MQTT-3.1.2-4] (5: [MQTT-3.1.2-23]): a publisher's, holding an unreleased QoS 2 (4.1)
    topic = ctx.topic()
    cid = ctx.client_id("p")
    p = ctx.connect(cid, clean=False)
    held = False  # (CONNACK Maximum QoS below 2: the session holds nothing but its existence)
    if p.max_qos == 2:
        p.send(encode_publish(topic, b"held", qos=2, packet_id=5, protocol=ctx.protocol))
        held = p.expect_pubrec(5) is not None
    p.disconnect()  # before PUBREL
    ctx.away()
    p = ctx.connect(cid, clean=False)
    present = p.session_present
    if held:
        p.send(encode_ack(PacketType.PUBREL, 5, protocol=ctx.protocol))
        try:
            p.expect(PacketType.PUBCOMP, 5)
        except Timeout:
            pass  # whether the broker ends the flow is qos2-dedupe-reconnect's question
    p.disconnect()
    if present:
        return
    sid, _ = _subscribed(ctx, "s", ctx.topic("s"), 1)
    if not ctx.connect(sid, clean=False).session_present:
        raise NotApplicable("SessionPresent=0 for every resumed session, with or without"
                            " subscriptions: reported once, by session-present-resumed")
    # 3.1.2.4 (5: 4.1): the existence of a session is session state, even if the rest is empty
    what = "a QoS 2 message awaiting PUBREL" if held else "nothing but its existence"
    raise Fail(f"SessionPresent=0 on reconnect for a session without subscriptions (a publisher's,"
               f" holding {what}): lost, or reported lost; a session with a subscription got"
               " SessionPresent=1")


def _offline_queue(ctx: Context, qos: int) -> None:
    # [MQTT-3.1.2-5] (5: [MQTT-3.1.2-23]) QoS 1/2 messages are kept for an absent client
    topic = ctx.topic()
    cid, granted = _subscribed(ctx, "s", topic, qos)
    _publish(ctx, topic, b"queued", qos)
    ctx.away()
    s = ctx.rejoin(cid, "session and its queued message")
    try:
        m = s.expect_publish(topic)
    except Timeout:
        raise Fail(f"the QoS {qos} message published while the client was away did not arrive"
                   f" within {ctx.target.timeout:.1f} s of the reconnect") from None
    # [MQTT-3.8.4-6] (5: [MQTT-3.8.4-8]) delivered at min(published, granted); a QoS 2 PUBLISH
    # the broker answered with PUBACK was taken as QoS 1 (qos2-publish-pubrec reports that)
    want = min(qos, granted, 1 if ctx.qos2_pubacked else 2)
    if m.payload != b"queued" or m.qos != want:
        raise Fail(f"got {m.describe()}, expected qos={want} payload b'queued'")
    if want < qos:
        why = [f"SUBACK granted QoS {granted}"] if granted < qos else []
        why += ["the QoS 2 PUBLISH was answered with PUBACK"] if ctx.qos2_pubacked else []
        ctx.note(f"delivered at QoS {want} ({', '.join(why)})")
    s.complete(m)
    s.disconnect()


def offline_queue_qos1(ctx: Context) -> None:
    _offline_queue(ctx, 1)


def offline_queue_qos2(ctx: Context) -> None:
    _offline_queue(ctx, 2)


def _queued_while_away(ctx: Context, payload: bytes) -> tuple[str, RawClient]:
    """A persistent QoS 1 subscription; ``payload`` published (QoS 1, RETAIN=0) while its
    client is away; the client back on its session: the topic, the rejoined client."""
    topic = ctx.topic()
    cid, _ = _subscribed(ctx, "s", topic, 1)
    _publish(ctx, topic, payload, 1)
    ctx.away()
    return topic, ctx.rejoin(cid, "session and its queued message")


def queued_not_retained(ctx: Context) -> None:
    # [MQTT-3.3.1-9] (5: [MQTT-3.3.1-12]) RETAIN=0 on a message sent for an existing subscription
    topic, s = _queued_while_away(ctx, b"not retained")
    try:
        m = s.expect_publish(topic)
    except Timeout:
        raise Fail(f"the queued message did not arrive within {ctx.target.timeout:.1f} s of the"
                   " reconnect") from None
    s.ack(m)
    if m.retain:
        raise Fail("a queued message published with RETAIN=0 arrived with RETAIN=1")
    s.disconnect()


def first_delivery_dup(ctx: Context) -> None:
    # [MQTT-3.3.1-3] an outgoing PUBLISH's DUP says only whether it is a retransmission: the
    # first delivery of a message has DUP=0, sent at once or queued while the client was away
    topic, s = _queued_while_away(ctx, b"queued")
    try:
        queued = s.expect_publish(topic)
        s.ack(queued)
        _publish(ctx, topic, b"live", 1)
        live = s.expect_publish(topic)
        s.ack(live)
    except Timeout as exc:
        raise Fail(f"a message did not arrive: {exc}") from None
    wrong = [kind for kind, m in (("queued while the client was away", queued), ("sent at once", live))
             if m.dup]
    if wrong:
        raise Fail("DUP=1 on the first delivery of a message " + " and of one ".join(wrong))
    s.disconnect()


_QOS_CASES: Final = ((1, 2), (0, 2), (2, 1), (2, 0), (1, 1))  # (published, subscribed)


def delivered_qos_min(ctx: Context) -> None:
    # [MQTT-3.8.4-6] (5: [MQTT-3.8.4-8]) delivered QoS = min(published QoS, granted QoS). Judged
    # on what arrived: a message due at QoS 0 is "at most once" (4.3.1) and may be dropped
    s = ctx.connect(ctx.client_id("s"), clean=True)
    granted = {q: s.subscribe(ctx.topic(f"sub{q}"), q) for q in (0, 1, 2)}
    p = _publisher(ctx)
    cases = [(pub, sub) for pub, sub in _QOS_CASES if pub <= p.max_qos]
    if len(cases) < len(_QOS_CASES):
        ctx.note(f"CONNACK Maximum QoS {p.max_qos}: nothing published above it [MQTT-3.2.2-11]")
    for pub, sub in cases:
        p.publish(ctx.topic(f"sub{sub}"), f"{pub}>{sub}".encode(), pub)
    got = {m.payload.decode("utf-8", "replace"): m.qos for m in s.drain(ctx.target.timeout, count=len(cases))}
    wrong, dropped = [], []
    for pub, sub in cases:
        key, want = f"{pub}>{sub}", min(pub, granted[sub])
        if key not in got and want == 0:
            dropped.append(f"QoS {pub} to a QoS {sub} subscription (granted {granted[sub]})")
        elif key not in got:
            wrong.append(f"QoS {pub} to a QoS {sub} subscription not delivered")
        elif got[key] != want:
            wrong.append(f"QoS {pub} to a QoS {sub} subscription (granted {granted[sub]}) delivered"
                         f" at QoS {got[key]}")
    if wrong:
        raise Fail("; ".join(wrong))
    if not got:
        raise NotApplicable("nothing arrived, and all was due at QoS 0 (which may be lost): no"
                            " delivered QoS to check")
    if dropped:
        ctx.note(f"not delivered, allowed at QoS 0 (at most once): {', '.join(dropped)}")
    if lower := [f"{q} as {g}" for q, g in granted.items() if g < q]:
        ctx.note(f"SUBACK granted QoS {', '.join(lower)} (allowed)")


def _redelivery(ctx: Context, qos: int) -> None:
    # [MQTT-4.4.0-1] resend the unacknowledged PUBLISH with its packet id; [MQTT-3.3.1-1] DUP=1
    topic = ctx.topic()
    cid = ctx.client_id("s")
    s = ctx.connect(cid, clean=False)
    _granted(s, topic, qos, require=True)
    _publish(ctx, topic, b"unacked", qos)
    first = s.expect_publish(topic)  # not acknowledged
    s.disconnect()
    ctx.away()
    s = ctx.rejoin(cid)
    try:
        again = s.expect_publish(topic)
    except Timeout:
        raise Fail(f"the unacknowledged QoS {qos} PUBLISH (id {first.packet_id}) was not resent"
                   f" within {ctx.target.timeout:.1f} s of the reconnect") from None
    problems = []
    if again.packet_id != first.packet_id:
        problems.append(f"packet id {again.packet_id}, was {first.packet_id}")
    if not again.dup:
        problems.append("DUP=0")
    if again.payload != first.payload or again.qos != first.qos:
        problems.append(f"different message: {again.describe()}")
    if problems:
        raise Fail("resent with " + ", ".join(problems))
    s.complete(again)
    s.disconnect()


def redelivery_qos1(ctx: Context) -> None:
    _redelivery(ctx, 1)


def redelivery_qos2(ctx: Context) -> None:
    _redelivery(ctx, 2)


def redelivery_order(ctx: Context) -> None:
    # [MQTT-4.6.0-1] unacknowledged messages are resent in their original order, and (4.6) the
    # topic's messages go on in order. A broker may keep fewer than three in flight: ejabberd
    # 23.01 sends the next only once the last is acknowledged (a window of one, allowed).
    topic = ctx.topic()
    cid = ctx.client_id("s")
    s = ctx.connect(cid, clean=False)
    s.subscribe(topic, 1)
    p = _publisher(ctx)
    for n in range(3):
        p.publish(topic, b"m%d" % n, 1)
    p.disconnect()
    first = [s.expect_publish(topic)]  # none acknowledged
    while len(first) < 3:
        try:
            first.append(s.expect_publish(topic, timeout=ctx.target.quiet))
        except Timeout:
            break  # the broker's window is full
    s.disconnect()
    ctx.away()
    s = ctx.rejoin(cid)
    again: list[Packet] = []
    while len(again) < 3:
        try:
            m = s.expect_publish(topic)
        except Timeout:
            break
        again.append(m)
        s.ack(m)  # a broker with a window sends the next one now
    before = [(m.packet_id, m.payload) for m in first]
    resent = [(m.packet_id, m.payload) for m in again[:len(first)]]
    if not again:
        raise Fail(f"nothing resent within {ctx.target.timeout:.1f} s of the reconnect")
    if resent != before:
        raise Fail(f"resent (packet id, payload) {resent}, expected {before}")
    payloads = [m.payload for m in again]
    if payloads != [b"m0", b"m1", b"m2"]:
        raise Fail(f"after the reconnect got {payloads}, expected [b'm0', b'm1', b'm2'] in order")
    if len(first) < 3:
        ctx.note(f"{len(first)} of 3 sent before an acknowledgement (a window of {len(first)},"
                 " allowed); resent in order, then the rest")
    s.disconnect()


def resume_pubrel(ctx: Context) -> None:
    # [MQTT-4.4.0-1] after PUBREC the broker resends PUBREL; once it has sent PUBREL it never
    # sends the PUBLISH again ([MQTT-4.3.3-1], 5: [MQTT-4.3.3-6])
    topic = ctx.topic()
    cid = ctx.client_id("s")
    s = ctx.connect(cid, clean=False)
    _granted(s, topic, 2, require=True)
    _publish(ctx, topic, b"pubrec'd", 2)
    m = s.expect_publish(topic)
    assert m.packet_id is not None
    s.ack(m)  # PUBREC
    s.expect(PacketType.PUBREL, m.packet_id)  # and no PUBCOMP
    s.disconnect()
    ctx.away()
    s = ctx.rejoin(cid)
    try:
        got = s.wait_for(lambda p: p.type is PacketType.PUBREL and p.packet_id == m.packet_id
                         or p.type is PacketType.PUBLISH and p.topic == topic, f"PUBREL id {m.packet_id}")
    except Timeout:
        raise Fail(f"PUBREL (id {m.packet_id}) not resent within {ctx.target.timeout:.1f} s of the"
                   " reconnect") from None
    if got.type is PacketType.PUBLISH:
        raise Fail(f"resent the PUBLISH ({got.describe()}) instead of PUBREL after PUBREC and"
                   " PUBREL")
    s.send(encode_ack(PacketType.PUBCOMP, m.packet_id, protocol=ctx.protocol))
    if late := [p for p in s.drain(ctx.target.quiet) if p.topic == topic]:
        raise Fail(f"delivered the message again after PUBCOMP: {late[0].describe()}")
    s.disconnect()


def qos2_publish_pubrec(ctx: Context) -> None:
    # [MQTT-4.3.3-2] (5: [MQTT-4.3.3-8]) the receiver of a QoS 2 PUBLISH answers PUBREC
    topic = ctx.topic()
    p = _publisher(ctx)
    # (CONNACK Maximum QoS below 2: n/a, by RawClient.send [MQTT-3.2.2-11])
    p.send(encode_publish(topic, b"qos2", qos=2, packet_id=3, protocol=ctx.protocol))
    if p.expect_pubrec(3) is None:
        raise Fail("a QoS 2 PUBLISH was answered with PUBACK, not PUBREC: the broker took it as"
                   " QoS 1")
    p.send(encode_ack(PacketType.PUBREL, 3, protocol=ctx.protocol))
    p.expect(PacketType.PUBCOMP, 3)
    p.disconnect()


def qos2_dedupe_connection(ctx: Context) -> None:
    # [MQTT-4.3.3-2] (5: [MQTT-4.3.3-10]) before PUBREL a repeated QoS 2 PUBLISH gets PUBREC and
    # is not delivered again
    topic = ctx.topic()
    s = ctx.connect(ctx.client_id("s"), clean=True)
    s.subscribe(topic, 2)
    p = _publisher(ctx)
    for dup in (False, True):
        p.send(encode_publish(topic, b"once", qos=2, packet_id=7, dup=dup, protocol=ctx.protocol))
        _pubrec(p, 7)
    p.send(encode_ack(PacketType.PUBREL, 7, protocol=ctx.protocol))
    p.expect(PacketType.PUBCOMP, 7)
    _received_once(ctx, s, topic, b"once")


def qos2_delivery_point(ctx: Context) -> None:
    # 4.3.3: a receiver may hand a QoS 2 message on when the PUBLISH arrives (Method A) or only
    # once PUBREL does (Method B); both are allowed. Which one decides what a session lost
    # between PUBREC and PUBREL costs, so ReleasedOnSessionLost (README): informative.
    topic = ctx.topic()
    s = ctx.connect(ctx.client_id("s"), clean=True)
    s.subscribe(topic, 2)
    p = _publisher(ctx)
    p.send(encode_publish(topic, b"when", qos=2, packet_id=11, protocol=ctx.protocol))
    _pubrec(p, 11)
    early = _payloads(s.drain(ctx.target.quiet), topic)
    p.send(encode_ack(PacketType.PUBREL, 11, protocol=ctx.protocol))
    p.expect(PacketType.PUBCOMP, 11)
    if not early and not _payloads(s.drain(ctx.target.quiet), topic):
        raise Fail("the message was not delivered at all")
    if early:
        ctx.report("on PUBLISH", "delivers QoS 2 on PUBLISH: a publisher's session lost after"
                   " PUBREC cannot lose the message (ReleasedOnSessionLost=drop avoids a duplicate)")
    else:
        ctx.report("on PUBREL", "delivers QoS 2 only on PUBREL: a publisher's session lost"
                   " between PUBREC and PUBREL loses the message (keep"
                   " ReleasedOnSessionLost=republish)")


def qos2_dedupe_reconnect(ctx: Context) -> None:
    # [MQTT-4.3.3-2] (5: [MQTT-4.3.3-10]) the same across a reconnect of the publisher; the
    # subscriber is away meanwhile and counts what its session got when it comes back
    topic = ctx.topic()
    sid, _ = _subscribed(ctx, "s", topic, 2)
    pid = ctx.client_id("p")
    p = ctx.connect(pid, clean=False)
    p.send(encode_publish(topic, b"once", qos=2, packet_id=9, protocol=ctx.protocol))
    _pubrec(p, 9)
    p.disconnect()  # before PUBREL
    ctx.away()
    # aedes 1.2 answers SessionPresent=0 for this session without subscriptions, yet keeps its
    # QoS 2 state: the verdict is the count (session-present-unsubscribed judges the flag)
    p = ctx.rejoin(pid, "publisher's session")
    p.send(encode_publish(topic, b"once", qos=2, packet_id=9, dup=True, protocol=ctx.protocol))
    _pubrec(p, 9)
    p.send(encode_ack(PacketType.PUBREL, 9, protocol=ctx.protocol))
    p.expect(PacketType.PUBCOMP, 9)
    p.disconnect()
    _received_once(ctx, ctx.rejoin(sid, "subscriber's session"), topic, b"once")


def failover_resume(ctx: Context) -> None:
    # [MQTT-3.1.2-4] (5: [MQTT-3.1.2-5]) a cluster is one server to its clients: a session made
    # on one node resumes on another, its unacknowledged message resent with its packet id
    # [MQTT-4.4.0-1] and what was queued meanwhile delivered [MQTT-3.1.2-5] (5: [MQTT-3.1.2-23])
    if ctx.target.failover is None:
        raise NotApplicable("needs --failover HOST:PORT (another node of the same cluster)")
    topic = ctx.topic()
    cid = ctx.client_id("s")
    s = ctx.connect(cid, clean=False)
    s.subscribe(topic, 1)
    _publish(ctx, topic, b"unacked", 1)
    first = s.expect_publish(topic)  # not acknowledged
    s.disconnect()
    _publish(ctx, topic, b"queued", 1)
    ctx.away()
    s = ctx.rejoin(cid, "session on the other node", failover=True)
    got: dict[bytes, Packet] = {}
    while len(got) < 2:
        try:
            m = s.expect_publish(topic)
        except Timeout:
            break
        got.setdefault(m.payload, m)
        s.ack(m)
    problems = []
    if b"unacked" not in got:
        problems.append(f"the unacknowledged message (id {first.packet_id}) was not resent")
    elif got[b"unacked"].packet_id != first.packet_id:
        problems.append(f"the unacknowledged message was resent with packet id"
                        f" {got[b'unacked'].packet_id}, was {first.packet_id}")
    if b"queued" not in got:
        problems.append("the message queued while the client was away was not delivered")
    if problems:
        raise Fail("on the other node: " + "; ".join(problems))
    s.disconnect()


def clean_discards_session(ctx: Context) -> None:
    # [MQTT-3.1.2-6] (5: [MQTT-3.1.2-4]) a clean connection discards the old session, and its own
    # session lasts only as long as the connection
    topic = ctx.topic()
    cid, _ = _subscribed(ctx, "s", topic, 1)
    p = _publisher(ctx)
    p.publish(topic, b"queued before", 1)
    s = ctx.connect(cid, clean=True)
    if s.session_present:
        raise Fail("SessionPresent=1 with CleanSession=1")
    if _payloads(s.drain(ctx.target.quiet), topic):
        raise Fail("the old session's queued message was delivered to the clean session")
    s.subscribe(topic, 1)  # belongs to the clean session: must end with its connection
    # positive control: the absences judged here mean something only if this one arrives
    p.publish(topic, b"control", 1)
    try:
        control = s.wait_for(lambda m: m.type is PacketType.PUBLISH and m.topic == topic
                             and m.payload == b"control", "PUBLISH of the control message")
    except Timeout:
        raise Fail(f"control: a QoS 1 message to the clean session's own subscription did not"
                   f" arrive within {ctx.target.timeout:.1f} s, so no absence here shows"
                   " anything") from None
    s.ack(control)
    if _payloads(s.pending, topic):
        raise Fail("the old session's queued message was delivered to the clean session")
    s.disconnect()
    s = ctx.connect(cid, clean=False)
    if s.session_present:
        raise Fail("SessionPresent=1 right after a clean session's connection closed: it was kept")
    p.publish(topic, b"after", 1)
    if got := _payloads(s.drain(ctx.target.quiet), topic):
        raise Fail(f"a subscription survived the clean session: got {got[0]!r}")
    s.disconnect()


def takeover(ctx: Context) -> None:
    # [MQTT-3.1.4-2] (5: [MQTT-3.1.4-3]) a second connection with the client id takes over: the
    # first is closed (5: after DISCONNECT 0x8E), the session goes on
    topic = ctx.topic()
    cid = ctx.client_id("s")
    a = ctx.connect(cid, clean=False)
    a.subscribe(topic, 1)
    b = ctx.rejoin(cid, "session taken over")
    seen = a.collect(ctx.target.timeout)
    if not a.closed_by_broker:
        raise Fail(f"the first connection was not closed within {ctx.target.timeout:.1f} s")
    if ctx.protocol == 5:
        # The DISCONNECT 0x8E is not a MUST (only the close is); a wrong reason code is wrong.
        reasons = [p.reason_code for p in seen if p.type is PacketType.DISCONNECT]
        if any(r != 0x8E for r in reasons):
            raise Fail(f"the first connection got DISCONNECT reason(s) {reasons}, not 0x8e")
        if not reasons:
            ctx.note("old connection closed without DISCONNECT 0x8E (allowed)")
    _publisher(ctx).publish(topic, b"to b", 1)
    try:
        m = b.expect_publish(topic)
    except Timeout:
        raise Fail(f"a QoS 1 message for the taken-over session was not delivered within"
                   f" {ctx.target.timeout:.1f} s") from None
    b.ack(m)
    b.disconnect()


def expiry_zero(ctx: Context) -> None:
    # 3.1.2.11.2: interval 0 or absent: the session ends when the connection closes
    for label, expiry in (("0", 0), ("absent", None)):
        cid = _subscribed_v5(ctx, f"z{label[0]}", expiry)
        c = ctx.connect(cid, clean=False)
        if c.session_present:
            raise Fail(f"SessionPresent=1 after a session with interval {label} ended")
        c.disconnect()


def _subscribed_v5(ctx: Context, role: str, expiry: int | None) -> str:
    cid = ctx.client_id(role)
    c = ctx.connect(cid, clean=False, expiry=expiry)
    c.subscribe(ctx.topic(role), 1)
    c.disconnect()
    return cid


def expiry_passes(ctx: Context) -> None:
    # [MQTT-4.1.0-2] the session is discarded once the interval has passed
    cid = _subscribed_v5(ctx, "a", 1)
    ctx.sleep(2.5)
    if ctx.connect(cid, clean=False).session_present:
        raise Fail("SessionPresent=1 2.5 s after a session with a 1 s interval ended")


def expiry_not_passed(ctx: Context) -> None:
    # [MQTT-3.1.2-23] the session is kept while the interval has not passed
    cid = _subscribed_v5(ctx, "a", 2)
    ctx.sleep(0.5)
    ctx.away()
    ctx.resume(cid, "session 0.5 s into its 2 s interval").disconnect()


def expiry_never(ctx: Context) -> None:
    # 3.1.2.11.2: 0xFFFFFFFF never expires
    cid = _subscribed_v5(ctx, "a", NEVER_EXPIRES)
    ctx.sleep(1.0)
    ctx.away()
    ctx.resume(cid, "session with interval 0xFFFFFFFF").disconnect()


def expiry_set_on_disconnect(ctx: Context) -> None:
    # 3.14.2.2.2: DISCONNECT sets a new interval (shorter for one client, longer for the other)
    shorter, longer = ctx.client_id("s"), ctx.client_id("l")
    for cid, on_connect, on_disconnect in ((shorter, PERSISTENT_EXPIRY, 1), (longer, 1, PERSISTENT_EXPIRY)):
        c = ctx.connect(cid, clean=False, expiry=on_connect)
        c.subscribe(ctx.topic(cid[-1]), 1)
        c.disconnect(session_expiry=on_disconnect)
    ctx.sleep(2.5)
    problems = []
    if ctx.connect(shorter, clean=False).session_present:
        problems.append(f"interval {PERSISTENT_EXPIRY} s cut to 1 s on DISCONNECT: still present after 2.5 s")
    if not ctx.connect(longer, clean=False).session_present:
        problems.append(f"interval 1 s raised to {PERSISTENT_EXPIRY} s on DISCONNECT: gone after 2.5 s")
    if problems:
        raise Fail("; ".join(problems))


_V5: Final = frozenset({5})

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("session-present-new", "MQTT-3.2.2-3", "MQTT-3.2.2-3",
             "no stored session: SessionPresent=0", session_present_new),
    Scenario("session-present-clean", "MQTT-3.2.2-1", "MQTT-3.2.2-2",
             "clean connect over an existing session: SessionPresent=0", session_present_clean),
    Scenario("session-present-resumed", "MQTT-3.2.2-2", "MQTT-3.2.2-3",
             "persistent session reconnects: SessionPresent=1", session_present_resumed, resumes=True),
    Scenario("session-present-unsubscribed", "MQTT-3.2.2-2", "MQTT-3.2.2-3",
             "a session without subscriptions (a publisher's) reconnects: SessionPresent=1",
             session_present_unsubscribed, resumes=True),
    Scenario("offline-queue-qos1", "MQTT-3.1.2-5", "MQTT-3.1.2-23",
             "QoS 1 message published while away arrives on reconnect", offline_queue_qos1,
             resumes=True),
    Scenario("offline-queue-qos2", "MQTT-3.1.2-5", "MQTT-3.1.2-23",
             "QoS 2 message published while away arrives on reconnect", offline_queue_qos2,
             resumes=True),
    Scenario("queued-not-retained", "MQTT-3.3.1-9", "MQTT-3.3.1-12",
             "a queued message published with RETAIN=0 arrives with RETAIN=0", queued_not_retained,
             resumes=True),
    Scenario("first-delivery-dup", "MQTT-3.3.1-3", "MQTT-3.3.1-3",
             "a message's first delivery (queued while away, or at once) has DUP=0", first_delivery_dup,
             resumes=True),
    Scenario("delivered-qos-min", "MQTT-3.8.4-6", "MQTT-3.8.4-8",
             "delivered QoS = min(published, granted)", delivered_qos_min),
    Scenario("redelivery-qos1", "MQTT-4.4.0-1/3.3.1-1", "MQTT-4.4.0-1/3.3.1-1",
             "unacknowledged QoS 1 resent on reconnect: DUP=1, same packet id", redelivery_qos1,
             resumes=True),
    Scenario("redelivery-qos2", "MQTT-4.4.0-1/3.3.1-1", "MQTT-4.4.0-1/3.3.1-1",
             "unacknowledged QoS 2 resent on reconnect: DUP=1, same packet id", redelivery_qos2,
             resumes=True),
    Scenario("redelivery-order", "MQTT-4.6.0-1", "MQTT-4.6.0-1",
             "unacknowledged QoS 1 resent in their original order, then the rest (any window)",
             redelivery_order, resumes=True),
    Scenario("resume-pubrel", "MQTT-4.4.0-1/4.3.3-1", "MQTT-4.4.0-1/4.3.3-6",
             "QoS 2 PUBREC'd but not PUBCOMP'd: PUBREL resent, never the PUBLISH", resume_pubrel,
             resumes=True),
    Scenario("qos2-publish-pubrec", "MQTT-4.3.3-2", "MQTT-4.3.3-8",
             "a QoS 2 PUBLISH is answered with PUBREC, not PUBACK", qos2_publish_pubrec),
    Scenario("qos2-dedupe-connection", "MQTT-4.3.3-2", "MQTT-4.3.3-10",
             "QoS 2 PUBLISH repeated before PUBREL is delivered once", qos2_dedupe_connection),
    Scenario("qos2-delivery-point", "4.3.3", "4.3.3",
             "informative: QoS 2 reaches subscribers on PUBLISH or on PUBREL (ReleasedOnSessionLost)",
             qos2_delivery_point),
    Scenario("qos2-dedupe-reconnect", "MQTT-4.3.3-2", "MQTT-4.3.3-10",
             "QoS 2 PUBLISH repeated (DUP) after a reconnect is delivered once", qos2_dedupe_reconnect,
             resumes=True),
    Scenario("failover-resume", "MQTT-3.1.2-4/4.4.0-1", "MQTT-3.1.2-5/4.4.0-1",
             "with --failover: a session resumes on another node, unacked resent, queued delivered",
             failover_resume, resumes=True),
    Scenario("clean-discards-session", "MQTT-3.1.2-6", "MQTT-3.1.2-4",
             "a clean connect discards the old session, subscriptions and queue", clean_discards_session),
    Scenario("takeover", "MQTT-3.1.4-2", "MQTT-3.1.4-3",
             "a second connection with the same client id takes the session over", takeover),
    Scenario("expiry-zero", "3.1.2.11.2", "3.1.2.11.2",
             "interval 0 or absent: the session ends with the connection", expiry_zero, _V5),
    Scenario("expiry-passes", "MQTT-4.1.0-2", "MQTT-4.1.0-2",
             "interval 1 s, back after 2.5 s: SessionPresent=0", expiry_passes, _V5),
    Scenario("expiry-not-passed", "MQTT-3.1.2-23", "MQTT-3.1.2-23",
             "interval 2 s, back after 0.5 s: SessionPresent=1", expiry_not_passed, _V5, resumes=True),
    Scenario("expiry-never", "3.1.2.11.2", "3.1.2.11.2",
             "interval 0xFFFFFFFF: the session is kept", expiry_never, _V5, resumes=True),
    Scenario("expiry-set-on-disconnect", "3.14.2.2.2", "3.14.2.2.2",
             "DISCONNECT changes the interval (60 s to 1 s, 1 s to 60 s)", expiry_set_on_disconnect, _V5),
)


def find_scenarios(names: Sequence[str] | None = None) -> list[Scenario]:
    """The scenarios named (all when ``names`` is empty or None); KeyError for an unknown one."""
    if not names:
        return list(SCENARIOS)
    by_name = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown scenario(s): {', '.join(unknown)}")
    return [by_name[n] for n in dict.fromkeys(names)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_scenario(scenario: Scenario, target: Target) -> Result:
    """Run one scenario; any error becomes a FAIL with its reason (never raised)."""
    spec = scenario.spec(target.protocol)
    if target.protocol not in scenario.protocols:
        return Result(scenario.name, spec, Status.NA, "MQTT 5 only")
    ctx = Context(target, scenario.name)
    start = time.monotonic()
    status, reason, value = Status.FAIL, "", ""
    try:
        scenario.func(ctx)
        if ctx.info is not None:
            status, (value, text) = Status.INFO, ctx.info
            ctx.notes.insert(0, text)
        else:
            status = Status.PASS
        if ctx.flag_zero:
            # the flag is judged by session-present-resumed / -unsubscribed alone
            ctx.note(f"SessionPresent=0 on reconnect ({', '.join(ctx.flag_zero)}); judged by what"
                     " the broker did")
        reason = "; ".join(ctx.notes)
    except NotApplicable as exc:
        status, reason = Status.NA, str(exc)
    except BeyondServerLimit as exc:  # the scenario needs what this broker does not offer
        status, reason = Status.NA, str(exc)
    except Fail as exc:
        reason = str(exc)
    except Refused as exc:
        reason = str(exc)
    except RawError as exc:
        reason = f"unexpected: {exc}"
        if target.protocol == 4 and isinstance(exc, ConnectionClosed) and "for PUBREC" in reason:
            reason += (" (a 3.1.1 broker that takes QoS 1 at most, e.g. mosquitto with max_qos 1,"
                       " closes the connection at a QoS 2 PUBLISH: 3.1.1 has no way to say so)")
    except OSError as exc:
        reason = f"connection error: {exc.strerror or exc}"
    except Exception as exc:  # a scenario must report, never crash the run
        log.exception("scenario %s crashed", scenario.name)
        reason = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        ctx.cleanup()
    if status is Status.FAIL and ctx.flag_zero and not reason.startswith(("SessionPresent=", "connection error")):
        # a lost session may explain the failure (or the broker kept it and erred all the
        # same, as ActiveMQ 5.17 does): the flag first, then what went wrong
        reason = f"SessionPresent=0 on reconnect ({ctx.flag_zero[0]}), and: {reason}"
    seconds = time.monotonic() - start
    log.info("%s: %s %s (%.2f s)", scenario.name, status.label, reason, seconds)
    return Result(scenario.name, spec, status, _one_line(reason), seconds, value)


def check_broker(target: Target) -> None:
    """Connect once with a clean session, subscribe to a topic under ``TOPIC_ROOT/#``, publish
    to it and get the message back; ``BrokerUnavailable`` with a one-line reason if that fails
    (unreachable, refused protocol or credentials, no CONNACK, topics not allowed)."""
    version = "MQTT 5" if target.protocol == 5 else "MQTT 3.1.1"
    client = RawClient(target.host, target.port, protocol=target.protocol, timeout=target.timeout,
                       name="probe")
    try:
        try:
            client.open()
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {target.address}: {exc.strerror or exc}") from None
        try:
            client.connect(f"msc{secrets.token_hex(4)}probe", clean=True, username=target.username,
                           password=target.password)
        except Refused as exc:
            hint = "; try --protocol 4" if target.protocol == 5 and exc.code == 1 else ""
            raise BrokerUnavailable(
                f"the broker at {target.address} refused an {version} CONNECT: CONNACK code"
                f" {exc.code} ({connack_reason(exc.code, target.protocol)}){hint}") from None
        except (RawError, OSError) as exc:
            raise BrokerUnavailable(
                f"no {version} CONNACK from the broker at {target.address}: {exc}") from None
        _check_topics(client, target)
        client.disconnect(linger=0.5)
    finally:
        client.close()


def _check_topics(client: RawClient, target: Target) -> None:
    """Subscribe and publish once under ``TOPIC_ROOT/#`` and get the message back: without
    that (an ACL, a SUBACK failure, PUBACK 0x87) every scenario would blame the broker."""
    from .raw import MalformedPacket  # noqa: PLC0415 - (kept to this function)

    topic = f"{TOPIC_ROOT}/{secrets.token_hex(4)}/probe"
    qos = min(1, client.max_qos)

    def denied(why: str) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"not allowed to use {TOPIC_ROOT}/# (the topics of every scenario) at {target.address}:"
            f" {why}; let the user publish and subscribe there")

    step = ""  # what worked before the error
    try:
        client.subscribe(topic, qos)
        step = f"PUBLISH {topic!r} qos {qos}: "
        client.publish(topic, b"probe", qos)
        step = f"subscribed to and published on {topic!r}, but "
        client.ack(client.expect_publish(topic))
    except BeyondServerLimit as exc:  # a Maximum Packet Size too small for any scenario
        raise BrokerUnavailable(f"cannot check the broker at {target.address}: {exc}") from None
    except MalformedPacket as exc:  # a protocol error, not an ACL's doing
        raise BrokerUnavailable(
            f"the broker at {target.address} sent a malformed packet: {step}{exc}") from None
    except RawError as exc:
        raise denied(f"{step}{exc}") from None


def run_all(target: Target, scenarios: Sequence[Scenario] | None = None, jobs: int = 4) -> list[Result]:
    """Run scenarios (all by default), ``jobs`` at a time; results in scenario order.

    With a ``Target.between`` hook they run one at a time.
    """
    chosen = list(SCENARIOS if scenarios is None else scenarios)
    if jobs <= 1 or target.between is not None:
        return [run_scenario(s, target) for s in chosen]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="compat") as pool:
        return list(pool.map(lambda s: run_scenario(s, target), chosen))

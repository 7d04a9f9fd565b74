"""``mqttsession.dialing`` and ``mqttsession.tcpinfo`` pinned on loopback sockets: the TCP connect
binds the source address given and lets an interrupt through; a handshake deadline is over once
the handshake is done; a PINGRESP waits only while the bytes before its PINGREQ are taken."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mqttsession import dialing, tcpinfo
from mqttsession.testing.brokers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)
    try:
        yield srv
    finally:
        srv.close()


def test_connect_tcp_binds_the_source_address(listener: socket.socket) -> None:
    """``bind_address`` / ``bind_port`` (paho's) are the source of the TCP connect."""
    port = free_port()
    tracked: list[socket.socket] = []
    sock = dialing.connect_tcp("127.0.0.1", listener.getsockname()[1], 10, ("127.0.0.1", port),
                               tracked.append)
    try:
        peer, addr = listener.accept()
        peer.close()
        assert addr == ("127.0.0.1", port) and tracked == [sock]
    finally:
        sock.close()


class _Interrupt(BaseException):
    pass


def test_connect_tcp_lets_an_interrupt_through(listener: socket.socket,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an ``OSError`` moves on to the next address: anything else (an interrupt, a
    ``KeyboardInterrupt``) is raised at once, the next address not tried, the socket closed."""
    tracked: list[socket.socket] = []
    one = socket.getaddrinfo("127.0.0.1", listener.getsockname()[1], 0, socket.SOCK_STREAM)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_args: one * 2)  # (two addresses)

    def track(sock: socket.socket) -> None:
        tracked.append(sock)
        raise _Interrupt

    with pytest.raises(_Interrupt):
        dialing.connect_tcp("127.0.0.1", listener.getsockname()[1], 10, ("", 0), track)
    assert len(tracked) == 1 and tracked[0].fileno() == -1


def test_a_deadline_is_over_once_the_handshake_is_done() -> None:
    """A handshake done before its deadline: ``end()`` is never called afterwards (it would
    cut what came next), and a failure before the deadline is raised as it is."""
    ended = threading.Event()
    with dialing.handshake_deadline(0.05, ended.set, "TLS"):
        pass
    assert not ended.wait(0.5)
    with pytest.raises(ConnectionResetError):
        with dialing.handshake_deadline(30, ended.set, "TLS"):
            raise ConnectionResetError("reset by the peer")
    assert not ended.is_set()


def test_a_deadline_without_a_thread_is_no_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread to be had for the timer (``RuntimeError``): the handshake goes on without a
    deadline instead of failing."""
    def start(self: threading.Timer) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Timer, "start", start)
    ran = []
    with dialing.handshake_deadline(0.01, lambda: None, "WebSocket"):
        ran.append(True)
    assert ran == [True]


class _Short:
    """An older kernel's ``TCP_INFO``: too short to hold ``tcpi_bytes_acked``."""

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        return bytes(124)


def test_bytes_acked_of_a_short_tcp_info_is_not_known() -> None:
    """A ``TCP_INFO`` that ends before ``tcpi_bytes_acked`` ends (Linux before 4.1): None."""
    assert tcpinfo.bytes_acked(_Short()) is None


class _Sock:
    """A socket as ``tcpinfo`` sees it: its ``TCP_INFO`` (bytes acknowledged) only."""

    def __init__(self) -> None:
        self.acked = 0

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        assert (level, opt) == (socket.IPPROTO_TCP, socket.TCP_INFO)
        info = bytearray(size)
        struct.pack_into("=Q", info, 120, self.acked)
        return bytes(info)


def test_ping_wait_waits_only_for_the_bytes_before_the_pingreq(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The PINGREQ ends where the bytes in the socket (unsent) and in the client's queue ended
    when it was first seen due: acks moving up to there wait again, acks past it (bytes sent
    after) do not; a look with no PINGRESP due starts afresh."""
    monkeypatch.setattr(tcpinfo, "unsent", lambda _sock: 100)
    sock, wait = _Sock(), tcpinfo.PingWait()
    queued: Any = lambda: 50  # noqa: E731
    assert wait.behind(sock, True, queued) is False  # first look: the PINGREQ is at 150
    sock.acked = 100
    assert wait.behind(sock, True, queued) is True  # moving, still before 150
    sock.acked = 149
    assert wait.behind(sock, True, queued) is True
    sock.acked = 400
    assert wait.behind(sock, True, queued) is True  # the PINGREQ went in this step
    sock.acked = 500
    assert wait.behind(sock, True, queued) is False  # past the PINGREQ: the broker is late
    assert wait.behind(sock, False, queued) is False  # none due: forgets its mark
    sock.acked = 600
    assert wait.behind(sock, True, queued) is False  # a new mark at 750
    sock.acked = 700
    assert wait.behind(sock, True, queued) is True
    assert wait.behind(sock, True, queued) is False  # not moving


def test_ping_wait_without_tcp_info_never_waits() -> None:
    """No ``TCP_INFO`` (not a TCP socket): the PINGRESP is judged as paho would."""
    wait = tcpinfo.PingWait()
    for _ in range(3):
        assert wait.behind(object(), True, lambda: 10) is False


def test_bytes_acked_and_unsent_of_a_real_connection(listener: socket.socket) -> None:
    """On Linux, a connection's acknowledged bytes grow by what the peer took, and nothing
    waits unsent once it did; bytes the peer cannot take yet (its window full) wait unsent."""
    sock = socket.create_connection(listener.getsockname(), timeout=10)
    peer, _ = listener.accept()
    try:
        before = tcpinfo.bytes_acked(sock)
        assert before is not None
        sock.sendall(b"x" * 1000)
        assert peer.recv(1000, socket.MSG_WAITALL) == b"x" * 1000
        for _ in range(500):  # (the ack of the bytes received: bounded wait)
            if tcpinfo.bytes_acked(sock) == before + 1000 and tcpinfo.unsent(sock) == 0:
                break
            threading.Event().wait(0.01)
        assert tcpinfo.bytes_acked(sock) == before + 1000
        assert tcpinfo.unsent(sock) == 0
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # (the peer reads nothing: its window fills)
            for _ in range(100_000):
                sock.send(b"y" * 65536)
        assert tcpinfo.unsent(sock) > 0
    finally:
        peer.close()
        sock.close()


class _Acks:
    """A socket whose acknowledged count takes ``values`` look by look (the last one stays)."""

    def __init__(self, values: list[int]) -> None:
        self.values, self.looks = values, 0

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        info = bytearray(size)
        struct.pack_into("=Q", info, 120, self.values[min(self.looks, len(self.values) - 1)])
        self.looks += 1
        return bytes(info)


def _watch(sock: Any, waiting: int, monkeypatch: pytest.MonkeyPatch,
           settle: float) -> tuple[list[int], Any]:
    """``cut_when_stalled`` of ``sock`` every 10 ms, ``waiting`` bytes unsent: the looks at
    which it cut, once ``settle`` s passed after the first cut (or without one)."""
    monkeypatch.setattr(tcpinfo, "unsent", lambda _sock: waiting)
    cuts: list[int] = []
    first = threading.Event()

    def cut() -> None:
        cuts.append(getattr(sock, "looks", 0))
        first.set()

    done = tcpinfo.cut_when_stalled(lambda: sock, cut, 0.01)
    try:
        first.wait(settle)
        threading.Event().wait(0.3)  # (a second cut would come meanwhile)
    finally:
        done.set()
    return cuts, done


def test_a_link_that_moves_is_cut_once_it_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Acks that go on (a slow link) are left alone; once they stop while bytes wait, one cut."""
    sock = _Acks([0, 10, 20, 30, 40, 40])
    cuts, _ = _watch(sock, 100, monkeypatch, 5.0)
    assert cuts == [6], cuts  # (looks 2-5 moved; look 6 saw 40 again: cut, then no more)


def test_an_idle_link_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing acknowledged since the last look but nothing waits either: not stalled."""
    cuts, _ = _watch(_Acks([7]), 0, monkeypatch, 0.3)
    assert cuts == []


def test_a_socket_without_tcp_info_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``TCP_INFO`` to be had (the socket gone): cut, not waited for as a live link."""
    cuts, _ = _watch(object(), 0, monkeypatch, 5.0)
    assert cuts == [0]

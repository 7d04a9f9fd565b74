"""TLS and password authentication against real mosquitto listeners, through each front end: the
sync ``Client``, the Mesh-style ``Connection``/``Session`` and the asyncio ``AsyncSession``.

The test makes a throwaway CA, a server certificate (CN/SAN "localhost", SAN IP 127.0.0.1) and
client certificates with ``cryptography``, and a password file with ``mosquitto_passwd``; the
brokers run from ``broker_conf/mosquitto-tls.conf``, ``mosquitto-tls-clientcert.conf`` and
``mosquitto-auth.conf`` rendered with those paths.

* TLS listener: the right CA connects (and a message makes the round trip); a different CA gives
  a ``ConnectError`` naming the broker's certificate;
* listener requiring a client certificate: one signed by the CA connects; none gives an error
  naming the client certificate; one from another CA an error naming the certificate;
* password listener: the right password connects; a wrong one, or none, gives an error naming
  the password;
* an ``ssl.SSLContext`` (``tls_context``) instead of the paths, on the same listeners;
* MQTT over WebSockets over TLS (wss, ``broker_conf/mosquitto-wss.conf``), with paths or a context.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import logging
import os
import re
import shutil
import ssl
import subprocess
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509  # the "test" extra installs it
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mqttsession import (
    AsyncSession,
    Client,
    ConnectError,
    Connection,
    Options,
    TlsOptions,
    UsageError,
)
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.brokers import free_port, load_template, render_template, wait_for_port
from mqttsession.testing.pytest_plugin import require_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

USER, PASSWORD = "gateway", "s3cret-pw"
FRONT_ENDS = ["client", "mesh", "aio"]


# ------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    ca: str  # the CA that signed the server and the good client certificate
    other_ca: str  # an unrelated CA
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_cert: str  # a client certificate signed by other_ca
    rogue_key: str


def _name(cn: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(directory: Path, stem: str, cn: str, issuer: tuple[Any, Any] | None, *,
           ca: bool = False, server: bool = False) -> tuple[Any, Any]:
    """Write ``stem.pem`` and ``stem.key``; returns (certificate, key). ``issuer`` None: self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert is not None else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{stem}.key"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue(d, "ca", "mqttsession test CA", None, ca=True)
    other = _issue(d, "other-ca", "some other CA", None, ca=True)
    _issue(d, "server", "localhost", ca, server=True)
    _issue(d, "client", "mqttsession test client", ca)
    _issue(d, "rogue", "mqttsession rogue client", other)
    p = {stem: str(d / f"{stem}.pem") for stem in ("ca", "other-ca", "server", "client", "rogue")}
    return Pki(p["ca"], p["other-ca"], p["server"], str(d / "server.key"), p["client"],
               str(d / "client.key"), p["rogue"], str(d / "rogue.key"))


# ------------------------------------------------------------------------------ brokers


def _broker(directory: Path, template: str, **paths: object) -> Iterator[MosquittoBroker]:
    text, _ = load_template(template)
    conf = directory / template
    conf.write_text(render_template(text, **paths), encoding="utf-8")
    broker = MosquittoBroker(conf, mosquitto_bin=require_mosquitto())
    broker.start()
    try:
        ws_port = paths.get("ws_port")
        if ws_port is not None:
            assert wait_for_port("127.0.0.1", int(str(ws_port)), 10), broker.log_text()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    yield from _broker(tmp_path_factory.mktemp("tls"), "mosquitto-tls.conf",
                       cafile=pki.ca, certfile=pki.server_cert, keyfile=pki.server_key)


@pytest.fixture(scope="module")
def clientcert_broker(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MosquittoBroker]:
    yield from _broker(tmp_path_factory.mktemp("mtls"), "mosquitto-tls-clientcert.conf",
                       cafile=pki.ca, certfile=pki.server_cert, keyfile=pki.server_key)


@pytest.fixture(scope="module")
def wss_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoBroker, int]]:
    """A WebSockets-over-TLS listener; yields (broker, its WebSockets port)."""
    ws_port = free_port()
    for broker in _broker(tmp_path_factory.mktemp("wss"), "mosquitto-wss.conf", cafile=pki.ca,
                          certfile=pki.server_cert, keyfile=pki.server_key, ws_port=ws_port):
        yield broker, ws_port


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(passwd, os.X_OK):
        pytest.skip("mosquitto_passwd not found (apt-get install mosquitto)")
    d = tmp_path_factory.mktemp("auth")
    password_file = d / "passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), USER, PASSWORD], check=True,
                   capture_output=True, timeout=30)
    yield from _broker(d, "mosquitto-auth.conf", password_file=str(password_file))


# ------------------------------------------------------------------------------ front ends


def _via_client(o: Options) -> None:
    c = Client(client_id=f"tls-{uuid.uuid4().hex[:12]}", username=o.username,
               password=o.password, tls_options=o.tls_options, transport=o.transport)
    got: list[bytes] = []
    arrived = threading.Event()
    c.on_message_in = lambda e: (got.append(e.message), arrived.set())
    c.on_subscribed = lambda e: subscribed.set()
    subscribed = threading.Event()
    try:
        c.connect(o.host, o.port, o.request_timeout_seconds)
        c.subscribe("secure/client", 1)
        assert subscribed.wait(10)
        c.publish_message("secure/client", 1, "over the secure link")
        assert c.flush(10) and arrived.wait(10)
        assert got == [b"over the secure link"]
    finally:
        c.close()


def _via_mesh(o: Options) -> None:
    t = o.tls_options
    if t.context is not None:
        connection = Connection.with_tls(o.address, tls_context=t.context, username=o.username,
                                         password=o.password, options=o)
    elif t.enabled:
        connection = Connection.with_tls(o.address, t.ca_cert_path, t.client_cert_path,
                                         t.client_key_path, username=o.username,
                                         password=o.password, options=o)
    else:
        connection = Connection.insecure(o.address, username=o.username, password=o.password,
                                         options=o)
    with connection.create_session() as session:
        session.subscribe("secure/mesh", 1)
        session.publish("secure/mesh", "over the secure link")
        msg = session.receive(10)
        assert msg is not None and msg.message == b"over the secure link"


def _via_aio(o: Options) -> None:
    async def main() -> None:
        async with await AsyncSession.create(o) as session:
            await session.subscribe("secure/aio", 1)
            await session.publish("secure/aio", "over the secure link")
            msg = await session.receive(10)
            assert msg is not None and msg.message == b"over the secure link"

    asyncio.run(main())


VIA: dict[str, Callable[[Options], None]] = {
    "client": _via_client, "mesh": _via_mesh, "aio": _via_aio,
}


def _options(broker: MosquittoBroker, tls: TlsOptions | None = None, **kw: Any) -> Options:
    return Options(address=broker.address, tls_options=tls or TlsOptions(),
                   request_timeout_seconds=5.0, **kw)


def _connect_fails(match: str, connect: Callable[[], None]) -> None:
    """``connect()`` raises a ``ConnectError`` whose message matches ``match``.

    A failed TLS connection leaves paho sockets that only paho's ``__del__`` closes (paho 2.2's
    ``_ssl_wrap_socket`` does not close the socket when the handshake raises, and ``Client`` does
    not close the network thread's socket pair), and paho logs the ``SSLError`` object itself,
    so a captured log record keeps them alive until some later garbage collection finalizes them
    in arbitrary order: a ResourceWarning, an error under ``filterwarnings = error``, in whatever
    test runs then. Hence: no paho log records here, and the garbage collected here, silently.
    """
    message = ""
    paho_log = logging.getLogger("mqttsession.paho")
    level = paho_log.level
    paho_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                connect()
            except ConnectError as exc:
                message = str(exc)
            gc.collect()
    finally:
        paho_log.setLevel(level)
    assert message, "connected, but should have been refused"
    assert re.search(match, message), message


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_tls_with_the_right_ca(tls_broker: MosquittoBroker, pki: Pki, via: str) -> None:
    VIA[via](_options(tls_broker, TlsOptions(True, pki.ca)))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_tls_with_a_wrong_ca(tls_broker: MosquittoBroker, pki: Pki, via: str) -> None:
    options = _options(tls_broker, TlsOptions(True, pki.other_ca))
    _connect_fails("the broker's TLS certificate was not accepted", lambda: VIA[via](options))


def test_tls_options_from_the_environment(
    tls_broker: MosquittoBroker, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three MQTTSESSION_TLS_* variables turn TLS on (the listener ignores the client cert)."""
    monkeypatch.setenv("MQTTSESSION_ADDRESS", tls_broker.address)
    monkeypatch.setenv("MQTTSESSION_TLS_CERTS_PATH", pki.ca)
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_CERT", pki.client_cert)
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_KEY", pki.client_key)
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "5")
    _via_aio(Options.from_env())


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_client_certificate_accepted(clientcert_broker: MosquittoBroker, pki: Pki, via: str) -> None:
    VIA[via](_options(clientcert_broker, TlsOptions(True, pki.ca, pki.client_cert, pki.client_key)))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_client_certificate_missing(clientcert_broker: MosquittoBroker, pki: Pki, via: str) -> None:
    options = _options(clientcert_broker, TlsOptions(True, pki.ca))
    _connect_fails("client certificate", lambda: VIA[via](options))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_client_certificate_from_another_ca(
    clientcert_broker: MosquittoBroker, pki: Pki, via: str
) -> None:
    options = _options(clientcert_broker, TlsOptions(True, pki.ca, pki.rogue_cert, pki.rogue_key))
    _connect_fails("certificate", lambda: VIA[via](options))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_password_accepted(auth_broker: MosquittoBroker, via: str) -> None:
    VIA[via](_options(auth_broker, username=USER, password=PASSWORD))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_password_wrong(auth_broker: MosquittoBroker, via: str) -> None:
    with pytest.raises(ConnectError, match="password"):
        VIA[via](_options(auth_broker, username=USER, password="not-it"))


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_password_missing(auth_broker: MosquittoBroker, version: int) -> None:
    with pytest.raises(ConnectError, match="password"):
        _via_client(_options(auth_broker, protocol_version=version))


# ------------------------------------------------------------------------------ ssl.SSLContext


def _context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_tls_context_with_the_right_ca(tls_broker: MosquittoBroker, pki: Pki, via: str) -> None:
    VIA[via](_options(tls_broker, TlsOptions(context=_context(pki.ca))))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_tls_context_with_a_wrong_ca(tls_broker: MosquittoBroker, pki: Pki, via: str) -> None:
    options = _options(tls_broker, TlsOptions(context=_context(pki.other_ca)))
    _connect_fails("the broker's TLS certificate was not accepted", lambda: VIA[via](options))


@pytest.mark.parametrize("via", FRONT_ENDS)
def test_tls_context_with_a_client_certificate(
    clientcert_broker: MosquittoBroker, pki: Pki, via: str
) -> None:
    context = _context(pki.ca, pki.client_cert, pki.client_key)
    VIA[via](_options(clientcert_broker, TlsOptions(context=context)))


def test_client_tls_context_keyword(clientcert_broker: MosquittoBroker, pki: Pki) -> None:
    """``Client(tls_context=...)`` alone turns TLS on; one without the client certificate is
    refused by a listener that requires one."""
    c = Client(tls_context=_context(pki.ca, pki.client_cert, pki.client_key))
    try:
        c.connect(clientcert_broker.host, clientcert_broker.port, 5)
        assert c.connected
    finally:
        c.close()
    bare = Client(tls_context=_context(pki.ca))
    try:
        _connect_fails("client certificate",
                       lambda: bare.connect(clientcert_broker.host, clientcert_broker.port, 5))
    finally:
        bare.close()


def test_tls_context_and_paths_together_are_refused(pki: Pki) -> None:
    with pytest.raises(UsageError, match="not both"):
        TlsOptions(True, pki.ca, context=_context(pki.ca))
    with pytest.raises(UsageError, match="not both"):
        Connection.with_tls("127.0.0.1:8883", pki.ca, tls_context=_context(pki.ca))


# ------------------------------------------------------------------------------ wss


@pytest.mark.parametrize("via", FRONT_ENDS)
@pytest.mark.parametrize("how", ["paths", "context"])
def test_websockets_over_tls(wss_broker: tuple[MosquittoBroker, int], pki: Pki, via: str,
                             how: str) -> None:
    tls = TlsOptions(True, pki.ca) if how == "paths" else TlsOptions(context=_context(pki.ca))
    VIA[via](Options(address=f"127.0.0.1:{wss_broker[1]}", tls_options=tls,
                     transport="websockets", request_timeout_seconds=5.0))


def test_websockets_over_tls_with_a_wrong_ca(wss_broker: tuple[MosquittoBroker, int],
                                             pki: Pki) -> None:
    options = Options(address=f"127.0.0.1:{wss_broker[1]}", transport="websockets",
                      tls_options=TlsOptions(context=_context(pki.other_ca)),
                      request_timeout_seconds=5.0)
    _connect_fails("the broker's TLS certificate was not accepted", lambda: _via_client(options))


def test_websockets_over_tls_from_the_environment(
    wss_broker: tuple[MosquittoBroker, int], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", f"127.0.0.1:{wss_broker[1]}")
    monkeypatch.setenv("MQTTSESSION_TRANSPORT", "websockets")
    monkeypatch.setenv("MQTTSESSION_TLS_CERTS_PATH", pki.ca)
    monkeypatch.setenv("MQTTSESSION_TLS_ENABLED", "true")
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "5")
    _via_aio(Options.from_env())


@pytest.mark.parametrize("kind", ["tls", "password"])
def test_failover_servers_share_tls_and_credentials(
    pki: Pki, tmp_path: Path, kind: str
) -> None:
    """``FailoverServers``: every server gets the same TLS settings (each certificate checked
    against its own server) and credentials: ``connect()`` goes past a dead address to the
    first broker, and when that one is killed the automatic reconnect reaches the second."""
    if kind == "tls":
        template = "mosquitto-tls.conf"
        paths = {"cafile": pki.ca, "certfile": pki.server_cert, "keyfile": pki.server_key}
        kw: dict[str, Any] = {"tls_options": TlsOptions(True, pki.ca)}
    else:
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.access(passwd, os.X_OK):
            pytest.skip("mosquitto_passwd not found (apt-get install mosquitto)")
        subprocess.run([passwd, "-b", "-c", str(tmp_path / "passwd"), USER, PASSWORD],
                       check=True, capture_output=True, timeout=30)
        template, paths = "mosquitto-auth.conf", {"password_file": str(tmp_path / "passwd")}
        kw = {"username": USER, "password": PASSWORD}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with contextlib.ExitStack() as stack:
        a, b = (stack.enter_context(contextlib.contextmanager(_broker)(
            tmp_path / name, template, **paths)) for name in ("a", "b"))
        c = Client(client_id=f"fo-{uuid.uuid4().hex[:12]}", clean_session=False, **kw)
        c.config("ReconnectDelayMin=1")
        c.config("ReconnectDelayMax=1")
        c.config(f"FailoverServers={a.address},{b.address}")
        connected: list[str] = []
        arrived = threading.Event()
        cond = threading.Condition()

        def on_connected(e: Any) -> None:
            with cond:
                connected.append(e.server)
                cond.notify_all()

        c.on_connected = on_connected
        c.on_message_in = lambda e: arrived.set()
        try:
            dead = _free_port()
            c.connect("127.0.0.1", dead, 10)
            assert connected == [a.address]
            c.subscribe("secure/failover", 1)
            a.kill()
            with cond:
                assert cond.wait_for(lambda: len(connected) == 2, 30), connected
            assert connected[1] == b.address
            c.publish_message("secure/failover", 1, "on the second server")
            assert c.flush(10) and arrived.wait(10)
        finally:
            c.close()


def _free_port() -> int:
    return free_port()


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else b"\x7e" + n.to_bytes(2, "big")) \
        + payload


def test_async_session_reads_what_tls_holds_behind_a_websocket_ping(pki: Pki) -> None:
    """A wss server sends a WebSocket PING and an MQTT PUBLISH in one TLS record: an
    ``AsyncSession`` receives the PUBLISH at once. Before: paho's wrapper answered the PING
    and reported nothing read; the PUBLISH waited, decrypted in OpenSSL's buffer where the
    loop's readiness cannot see it, until more bytes came (up to a keep-alive)."""
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import socket  # noqa: PLC0415

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):  # (the test ended first)
            answer()

    def answer() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        raw, _ = listener.accept()
        with ctx.wrap_socket(raw, server_side=True) as c:
            req = b""
            while b"\r\n\r\n" not in req:
                req += c.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in req.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(  # noqa: S324 - the WebSocket spec's
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection:"
                      b" Upgrade\r\nSec-WebSocket-Accept: " + accept +
                      b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            c.recv(4096)  # CONNECT
            c.sendall(_ws_frame(2, b"\x20\x02\x00\x00"))  # CONNACK
            stop.wait(1.0)
            publish = b"\x30\x0b\x00\x04pinghello"  # QoS 0 "ping": "hello"
            c.sendall(_ws_frame(9, b"") + _ws_frame(2, publish))  # one TLS record
            stop.wait(30)

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def main() -> bytes | None:
        s = await AsyncSession.create(Options(
            address=f"localhost:{listener.getsockname()[1]}", transport="websockets",
            tls_options=TlsOptions(True, pki.ca), request_timeout_seconds=5,
            keep_alive=60))
        try:
            m = await s.receive(timeout=4)
            return None if m is None else m.message
        finally:
            stop.set()
            await s.close()

    try:
        assert asyncio.run(main()) == b"hello"
    finally:
        stop.set()
        listener.close()
        server.join(5)


def test_asyncio_tls_connects_load_the_cas_off_the_loop_once(
        clientcert_broker: MosquittoBroker, pki: Pki, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: each ``connect()`` of an ``AsyncSession`` (each session of an ``AsyncGateway``)
    made its TLS context on the loop (a hunt: 43 ms for the system's CAs, a 2.7 s stop for
    50 sessions connecting together). Now the context is made once for the files as they are,
    in the executor; a file renewed on disk makes a new one."""
    loads: list[bool] = []  # whether each CA load ran on the loop's thread
    real = ssl.SSLContext.load_verify_locations

    def load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(threading.current_thread() is threading.main_thread())
        real(self, *args, **kwargs)
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", load)
    ca = tmp_path / "ca.pem"
    shutil.copy(pki.ca, ca)
    tls = TlsOptions(True, str(ca), pki.client_cert, pki.client_key)

    async def main() -> None:
        for _ in range(3):
            async with await AsyncSession.create(_options(clientcert_broker, tls)) as s:
                assert s.connected
        st = os.stat(ca)  # (renewed: the same bytes, a new mtime)
        os.utime(ca, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        async with await AsyncSession.create(_options(clientcert_broker, tls)) as s:
            assert s.connected
        st = os.stat(ca)  # (a review: another CA copied over it keeping size and mtime)
        with open(pki.other_ca, "rb") as other, open(ca, "wb") as f:
            f.write(other.read().ljust(st.st_size, b"\n")[:st.st_size])
        os.utime(ca, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises((ConnectError, UsageError)):  # (the file read again: refused)
            await AsyncSession.create(_options(clientcert_broker, tls))

    asyncio.run(asyncio.wait_for(main(), 60))
    assert loads == [False, False, False], loads


def test_a_forgotten_ids_old_session_is_ended_with_the_sessions_tls_and_credentials(
        clientcert_broker: MosquittoBroker, auth_broker: MosquittoBroker, pki: Pki,
        tmp_path: Path) -> None:
    """MQTT 3.1.1: the connection that ends a forgotten id's old broker session
    (``connecting.end_old_session``) is made with the session's TLS settings (a client
    certificate the broker requires) and credentials; refused (a wrong password), the
    connect fails as a refused CONNECT does and the id stays forgotten."""
    from mqttsession import Gateway  # noqa: PLC0415

    tls = TlsOptions(True, pki.ca, pki.client_cert, pki.client_key)
    with Gateway(tmp_path / "gw") as gw:
        for cid in ("tls", "auth"):
            c = gw.client(cid, clean_session=False, protocol_version=4)
            c.publish_data("secure/forgotten", 1, b"stored")
            c.close()
            assert gw.forget(cid) is True
        c = gw.client("tls", clean_session=False, protocol_version=4, tls_options=tls)
        c.connect(clientcert_broker.host, clientcert_broker.port, 10)
        assert c.connected
        c.close()
        c = gw.client("auth", clean_session=False, protocol_version=4, username=USER,
                      password="not-it")
        with pytest.raises(ConnectError, match="wrong username or password"):
            c.connect(auth_broker.host, auth_broker.port, 10)
        c.close()
    forgotten = (tmp_path / "gw" / "forgotten").read_text()
    assert "auth" in forgotten and "tls" not in forgotten


def test_client_context_keeps_the_contexts_of_the_16_last_sets_of_files(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``client_context`` keeps one context per set of files, for the 16 last made: going back
    to a set among them takes its context again (no CA loaded again); a 17th drops the oldest."""
    from mqttsession import dialing  # noqa: PLC0415

    monkeypatch.setattr(dialing, "_contexts", {})
    cas = []
    for i in range(16):
        shutil.copy(pki.ca, tmp_path / f"ca{i}.pem")
        cas.append(str(tmp_path / f"ca{i}.pem"))
    first = dialing.client_context(cas[0], None, None)
    for ca in cas[1:16]:
        assert dialing.client_context(ca, None, None) is not first
    assert dialing.client_context(cas[0], None, None) is first  # (16 kept)
    assert dialing.client_context(cas[0], pki.client_cert, pki.client_key) is not first  # (17th)
    assert dialing.client_context(cas[0], None, None) is not first  # (the oldest went)

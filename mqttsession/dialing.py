"""A connection's set-up that another thread can end at once: the TCP connect (its socket
known before it connects), the TLS handshake (its socket known before it starts) and the TLS /
WebSocket handshakes (a deadline)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from typing import Any, Callable, Iterator

__all__ = ["TrackedContext", "client_context", "connect_tcp", "handshake_deadline"]

_contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}  # ``client_context``'s, by files
_contexts_lock = threading.Lock()


def client_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The TLS client context paho's ``tls_set`` makes for these files (TLS 1.2+, the server's
    certificate and host name checked, ``ca`` or the system's CAs), made once for the files
    as they are now (paths, inodes, sizes, mtimes, ctimes: a renewed one makes a new one,
    also copied keeping its mtime): loading the CAs
    takes 40+ ms (the system's), which a gateway's connects paid each, on its loop."""
    def stamp(path: str | None) -> tuple[Any, ...]:
        if path is None:
            return (None,)
        st = os.stat(path)  # (ctime and inode too: a copy that keeps the mtime, ``cp -p``)
        return path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
    files = (stamp(ca), stamp(cert), stamp(key))
    with _contexts_lock:
        ctx = _contexts.get(files)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (CERT_REQUIRED, check_hostname)
            if cert is not None:
                ctx.load_cert_chain(cert, key)
            if ca is not None:
                ctx.load_verify_locations(ca)
            else:
                ctx.load_default_certs()
            if len(_contexts) >= 16:  # (a few sets of files at a time: the oldest goes)
                _contexts.pop(next(iter(_contexts)))
            _contexts[files] = ctx
        return ctx


def connect_tcp(host: str, port: int, timeout: float | None, source: tuple[str, int],
                track: Callable[[socket.socket], None]) -> socket.socket:
    """``socket.create_connection``, each socket given to ``track`` before its connect: a
    ``shutdown`` of it from another thread ends a connect in progress (Linux: SYN_SENT)."""
    err: OSError = OSError(f"no address for {host}")
    for af, kind, proto, _name, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(af, kind, proto)
        try:
            track(sock)  # (it raises once the attempt was ended)
            sock.settimeout(timeout)
            sock.bind(source)
            sock.connect(addr)
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            err = exc
    raise err


class TrackedContext:
    """An ``ssl.SSLContext`` whose ``wrap_socket`` gives each TLS socket to ``track`` before
    its handshake: the TCP socket it wrapped is detached, a ``shutdown`` of it ends nothing."""

    def __init__(self, context: ssl.SSLContext, track: Callable[[socket.socket], None]) -> None:
        self.context, self._track = context, track

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = self.context.wrap_socket(*args, **kwargs)
        self._track(sock)  # (it raises once the attempt was ended: the caller closes sock)
        return sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.context, name)


@contextlib.contextmanager
def handshake_deadline(timeout: float, end: Callable[[], Any], what: str | None
                       ) -> Iterator[None]:
    """``end()`` (from a timer thread) once ``what`` (a handshake; None: no deadline) is
    still under way after ``timeout`` s; the failure it causes becomes a ``TimeoutError``."""
    if what is None:
        yield
        return
    cut = threading.Event()

    def expire() -> None:
        cut.set()
        end()

    limit = threading.Timer(timeout, expire)
    limit.daemon = True
    with contextlib.suppress(RuntimeError):  # (no thread to be had: no deadline)
        limit.start()
    try:
        yield
    except BaseException as exc:
        if cut.is_set():
            raise TimeoutError(f"the {what} handshake not done within {timeout:g} s") from exc
        raise
    finally:
        limit.cancel()

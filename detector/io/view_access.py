"""Who may use the live view: its address, its access token and the Host names it answers to.

Kept apart from the server so that the rules read in one place and are checked the same way for every URL.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import re
import secrets
import socket
from collections.abc import Iterable
from http import HTTPStatus

from ..config import SERVE_TOKEN_ENV
from ..errors import SinkError

log = logging.getLogger(__name__)
TOKEN_ENV = SERVE_TOKEN_ENV
NO_TOKEN = "none"
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # safe in a URL and a cookie as is
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*")

Refusal = tuple[HTTPStatus, str]
"""A status and the plain text that says why; the text never quotes the request."""


def parse_address(spec: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); the host defaults to 127.0.0.1."""
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise SinkError(f"--serve takes PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080), got {spec!r}")
    if int(port) > 65535:
        raise SinkError(f"--serve port {int(port)} is out of range 1-65535 (0 picks a free one); e.g. --serve 8080")
    return host, int(port)


def check_address(host: str, port: int) -> None:
    """Fail now, with one line, if ``host:port`` cannot be served (unknown host, address not on this
    machine, port in use), before the model loads or any output is opened."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise SinkError(
            f"--serve host {host!r} cannot be resolved; use an address of this machine such as 127.0.0.1 or 0.0.0.0"
        ) from None
    family, _, _, _, addr = infos[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
    except OSError as exc:
        raise SinkError(bind_error(host, port, exc)) from None
    finally:
        probe.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), or a one-line SinkError saying why not."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror:
        sock.close()
        raise SinkError(f"--serve host {host!r} cannot be resolved; use 127.0.0.1 or 0.0.0.0") from None
    except OSError as exc:
        sock.close()
        raise SinkError(bind_error(host, port, exc)) from None
    return sock


def bind_error(host: str, port: int, exc: OSError) -> str:
    """One line for a bind that failed, saying what to do instead."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; pick a free port with --serve PORT"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--serve address {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"no permission to serve on port {port} (ports below 1024 need root); pick a port such as 8080"
    return f"cannot serve on {host}:{port} ({exc.strerror}); pick another --serve address"


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine's loopback interface (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_token(token: str | None) -> None:
    """Refuse, in one line that does not echo it, a token that is neither ``none`` nor a usable secret."""
    if token is None or token.lower() == NO_TOKEN or _TOKEN_RE.fullmatch(token):
        return
    raise SinkError(
        "--serve-token must be 'none' or 16 to 256 letters, digits, '-', '_', '.' or '~' "
        "(leave it out for a random one)"
    )


def access_token(host: str, given: str | None = None) -> str | None:
    """The token the live view on ``host`` requires, or None for none.

    ``given`` is a token, ``"none"`` (no token; warned about beyond loopback), or None: a
    random token when ``host`` is reachable from other machines, none on loopback.
    """
    if given is not None:
        check_token(given)
        if given.lower() != NO_TOKEN:
            return given
        if not is_loopback(host):
            log.warning("the live view on %s has no access token (--serve-token none): anyone who can reach "
                        "the port sees the video and its stats", host)  # fmt: skip
        return None
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def redact(text: str) -> str:
    """``text`` with any ``token=...`` replaced by ``token=***``, for logs."""
    return _TOKEN_IN_URL.sub(r"\1***", text)


def host_is_local(header: str) -> bool:
    """Whether a Host header names loopback: a page from any other name is a DNS-rebinding attempt."""
    name = header.strip()
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Access:
    """The rule every request passes before it is served.

    ``token`` None: no token (a loopback view then answers only to loopback Host names, exactly one of
    them, so a page that rebinds its own name to 127.0.0.1 cannot read it). Otherwise the token must come
    in the query or in this view's cookie (one name per port: cookies ignore ports), compared in constant time.
    """

    def __init__(self, token: str | None, *, port: int, check_host: bool) -> None:
        self.token = token
        self.cookie_name = f"detector_token_{port}"
        self.check_host = check_host
        self._token_bytes = token.encode() if token else b""

    def refusal(self, query_tokens: Iterable[str], cookie_headers: Iterable[str], hosts: list[str]) -> Refusal | None:
        """Why a request is refused, or None to serve it.

        ``query_tokens``: the ``token`` values of the query, in order (the last non-empty one counts);
        ``cookie_headers``: the Cookie headers; ``hosts``: every Host header.
        """
        if self.token is None:
            if not self.check_host:
                return None
            if len(hosts) != 1:
                return HTTPStatus.BAD_REQUEST, "a request to this live view needs exactly one Host header\n"
            if not host_is_local(hosts[0]):
                return HTTPStatus.FORBIDDEN, "this live view answers only to localhost and loopback addresses\n"
            return None
        given = self._given(query_tokens, cookie_headers)
        if given is None:
            return HTTPStatus.UNAUTHORIZED, "this live view needs its access token: open the URL it printed at start\n"
        if not hmac.compare_digest(given.encode(), self._token_bytes):
            return HTTPStatus.FORBIDDEN, "wrong access token for this live view\n"
        return None

    def _given(self, query_tokens: Iterable[str], cookie_headers: Iterable[str]) -> str | None:
        """The token a request shows: the query's (an empty one is none), else this view's cookie."""
        given = [value for value in query_tokens if value]
        if given:
            return given[-1]
        found = None
        for header in cookie_headers:
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == self.cookie_name:
                    found = value
        return found

    def cookie(self) -> str:
        """The Set-Cookie value that lets the page's own requests through without the token in their URLs."""
        return f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"

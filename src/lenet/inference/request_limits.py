"""What lenet.serve refuses before a request costs it anything: slow request heads, foreign hosts, foreign origins.

- `HeaderDeadline`: uvicorn's h11 protocol with a deadline for each request's line and headers. uvicorn's only
  timer, `timeout_keep_alive`, runs while a kept-alive connection is idle and stops at its first byte; a new
  connection has none. So a client that connects and sends nothing, or a header a byte a minute, holds a
  connection for ever.
- `HostAndOrigin`: an ASGI middleware that answers only the Host names the server is reached by (DNS rebinding: a
  page of evil.example, whose name the attacker then points at 127.0.0.1, sends `Host: evil.example`), and only
  web pages of its own origin or of `cors_origins` (a cross-origin form posts to any server without asking first).
  Both before the body is read.

The request body has its own deadline, in the app (lenet.inference.http_api, `upload_timeout_s`): it is the app that
reads it.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443}


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol; a connection must deliver a whole request head within `timeout_s` of being ready for
    one (when it opens, and when the previous response is sent), or it is closed.

    The timer also covers a refused request's unread body (uvicorn reads and drops it after the answer): a client
    that trickles it is closed too. Idle kept-alive connections are closed after the shorter of this and uvicorn's
    `timeout_keep_alive`.
    """

    timeout_s: float = 10.0  # set by a subclass: see `with_header_timeout`
    deadline = None  # the armed timer (an asyncio.TimerHandle)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's line and headers are complete: the app has it now
            self._disarm()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():  # no pipelined request began meanwhile
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        self.deadline = None
        # Closed without a 408: a client about to reuse an idle connection would read it as the answer to its request.
        self.transport.close()


def with_header_timeout(timeout_s: float) -> type[HeaderDeadline]:
    """The protocol class for uvicorn.Config(http=...): uvicorn builds one per connection; the setting rides on it."""
    return type(HeaderDeadline.__name__, (HeaderDeadline,), {"timeout_s": timeout_s})


@dataclass(frozen=True)
class Hosts:
    """The Host headers answered: names and addresses, "*.example.org" patterns, "*" for any; and, with `reached`,
    the address of this machine a request came in on (a server bound to 0.0.0.0 has several, and an address literal
    in the Host header cannot be a rebinding attack: the page's origin is then that address, which is ours)."""

    names: tuple[str, ...]
    reached: bool = False

    def allow(self, host: str, reached_address: str) -> bool:
        return (
            "*" in self.names
            or host in self.names
            or any(name.startswith("*.") and host.endswith(name[1:]) for name in self.names)
            or (self.reached and host == reached_address.lower())
        )

    def __str__(self) -> str:
        return ", ".join(self.names) + (" and the address a request reaches" if self.reached else "")


def allowed_hosts(setting: list[str] | None, host: str, address: str) -> Hosts:
    """The Hosts a server bound to `host` (the setting, a name or an address), which resolved to `address`, answers.

    `setting` (allowed_hosts) is the list as given; null derives it from the address: loopback -> localhost and the
    loopback addresses; a specific address -> it (and the name it was given by); 0.0.0.0 or :: -> this machine's
    name, its full name, localhost and whichever of its addresses a request reaches.
    """
    if setting is not None:
        return Hosts(tuple(dict.fromkeys(name.strip("[]").lower() for name in setting)))
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        names = [*LOOPBACK, host, address]
    elif ip.is_unspecified:
        names = [*LOOPBACK, socket.gethostname(), socket.getfqdn()]  # looked up once, at start
    else:
        names = [host, address]
    return Hosts(tuple(dict.fromkeys(name.strip("[]").lower() for name in names)), reached=True)


def split_host(netloc: str) -> tuple[str, int | None] | None:
    """(host, port) of a Host header or an origin's netloc: lower case, IPv6 without brackets; None if malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        if parts.netloc != netloc or "@" in netloc or not parts.hostname:
            return None
        return parts.hostname, parts.port
    except ValueError:  # a bad port or an unclosed "["
        return None


def same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether `origin` (scheme://host[:port]) names the server the Host header reached. The scheme is not compared:
    behind a TLS proxy the page is https while uvicorn sees http; one host and port serve one scheme."""
    try:
        parts = urlsplit(origin)
        default = DEFAULT_PORTS.get(parts.scheme)
        return parts.hostname == host[0] and (parts.port or default) == (host[1] or default)
    except ValueError:
        return False


class HostAndOrigin:
    """Refuses, before the body is read, a Host the server does not answer (400) and a web page of another origin
    that `cors_origins` does not list (403). Requests without an Origin header (curl, scripts) are not pages."""

    def __init__(self, app, hosts: Hosts, cors_origins: list[str]):
        self.app = app
        self.hosts = hosts
        self.origins = {origin.rstrip("/").lower() for origin in cors_origins}

    async def __call__(self, scope, receive, send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        header = headers.get("host", "")
        host = split_host(header)
        if host is None or not self.hosts.allow(host[0], (scope.get("server") or ("",))[0]):
            message = f"Host {header!r} is not a name of this server (allowed_hosts: {self.hosts}): add it to serve it"
            return JSONResponse({"error": message}, 400)
        origin = headers.get("origin")
        if origin is None or same_origin(origin, host) or "*" in self.origins or origin.lower() in self.origins:
            return None
        message = f"web pages of {origin} may not call this server: to allow them, add it to cors_origins"
        return JSONResponse({"error": message}, 403)

"""Who may use serve's routes: one check for every route that answers about, or runs, the model or code.

A web page the user visits can reach serve's port: with a blind cross-origin POST (a form or
`text/plain` body needs no CORS preflight) it would spend GPU time on /v1/completions or run code on
/api/check; through DNS rebinding (its own name resolving to 127.0.0.1) it could also read the
answers. So, on every protected route (RequestPolicy.check):
  - the Host header must name this server (loopback, the bind address, or serve.allowed_hosts);
  - a browser's Origin, when sent, must be this server's own or listed (serve.check_allowed_origins);
  - a POST body must be declared JSON (Content-Type: application/json);
  - a POST (it runs the model or code) needs a bearer token once serve listens beyond loopback.
The token itself is checked by openai_api.bearer_auth when serve.api_key_env is set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from raywiz.serve.openai_api import ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class RequestPolicy:
    """Which Hosts and Origins may use serve, and whether it listens beyond loopback with a token."""

    bind_host: str = "127.0.0.1"
    has_token: bool = False
    allowed_origins: list[str] = field(default_factory=list)  # e.g. "https://lab.example:8443"
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides loopback and bind_host

    def hosts(self) -> set[str]:
        names = {*LOOPBACK_NAMES, *(h.lower() for h in self.allowed_hosts)}
        if self.bind_host not in ("0.0.0.0", "::", ""):
            names.add(self.bind_host.lower())
        return names

    def check(self, request: Request) -> None:
        """Raise ApiError (403/415) unless this request may use a protected route."""
        host_header = request.headers.get("host", "")
        host = (urlsplit(f"//{host_header}").hostname or "").lower()
        if host not in self.hosts():
            raise ApiError(403, f"Host {host_header!r} is not this server (add it to serve.allowed_hosts)",
                           type="permission_error", code="host_not_allowed")
        origin = request.headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            same = parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.lower()
            if not same and origin.rstrip("/") not in [o.rstrip("/") for o in self.allowed_origins]:
                raise ApiError(403, f"Origin {origin!r} may not use this server (add it to "
                               "serve.check_allowed_origins)", type="permission_error", code="origin_not_allowed")
        if request.method != "POST":
            return
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "send the request as JSON (Content-Type: application/json)",
                           type="invalid_request_error", code="unsupported_media_type")
        if not is_loopback(self.bind_host) and not self.has_token:
            raise ApiError(403, "serve listens beyond loopback without a bearer token: this route runs the model "
                           "or code, so set serve.api_key_env to enable it", type="permission_error",
                           code="token_required")


def request_guard(policy: RequestPolicy):
    """A FastAPI dependency that applies `policy` (routers include it with their other dependencies)."""

    async def check(request: Request) -> None:
        policy.check(request)

    return check

"""A deadline for a request's headers in the HTTP server serve runs on (uvicorn, in Ray Serve's proxy).

uvicorn times out idle keep-alive connections but not a client that sends its headers a byte at a
time (slowloris): such clients could hold every socket. `install_header_timeout` makes uvicorn's
HTTP protocols close a connection whose request headers are not complete HEADER_TIMEOUT_S after it
opened, or after its previous response ended. It changes which classes uvicorn's Config loads, so it
must run in the process that starts uvicorn before it starts: build_api calls it (a server in this
process); in Ray Serve's proxy, HeaderTimeout does, a pass-through middleware that the proxy builds
before it starts uvicorn, named by the proxy's callback (PROXY_CALLBACK_ENV = `proxy_middlewares`,
set by run_serve for the cluster it starts; a cluster started elsewhere needs it in its environment).
"""

from __future__ import annotations

HEADER_TIMEOUT_S = 10.0


def _with_header_deadline(base: type) -> type:
    class WithHeaderDeadline(base):  # type: ignore[misc, valid-type]
        header_timeout_s = HEADER_TIMEOUT_S

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            # uvicorn makes a new request cycle once a request's headers are complete.
            self.loop.call_later(self.header_timeout_s, self._header_deadline_passed, self.cycle)

        def _header_deadline_passed(self, cycle_then) -> None:
            if self.cycle is cycle_then and not self.transport.is_closing():
                self.transport.close()

    WithHeaderDeadline.__name__ = WithHeaderDeadline.__qualname__ = f"{base.__name__}WithHeaderDeadline"
    return WithHeaderDeadline


_INSTALLED: dict[str, type] = {}


def install_header_timeout() -> None:
    """Point uvicorn's protocol names ("auto", "h11", "httptools") at the classes with the deadline."""
    import uvicorn.config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if _INSTALLED:
        return
    _INSTALLED["auto"] = _with_header_deadline(AutoHTTPProtocol)
    _INSTALLED["h11"] = _with_header_deadline(H11Protocol)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        _INSTALLED["httptools"] = _with_header_deadline(HttpToolsProtocol)
    except ImportError:
        pass
    for name in _INSTALLED:
        uvicorn.config.HTTP_PROTOCOLS[name] = f"{__name__}:_INSTALLED_{name}"
        globals()[f"_INSTALLED_{name}"] = _INSTALLED[name]


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = f"{__name__}:proxy_middlewares"


def proxy_middlewares() -> list:
    """Ray Serve's proxy callback: the middlewares its HTTP server gets."""
    from starlette.middleware import Middleware

    return [Middleware(HeaderTimeout)]


class HeaderTimeout:
    """A pass-through ASGI middleware whose construction installs the header deadline in the process
    that builds it."""

    def __init__(self, app):
        install_header_timeout()
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)

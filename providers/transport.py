"""httpx's API over aiohttp's connection pool: the transport of every provider client.

Why: httpcore's pool (httpx's default transport) rescans every queued request against
every connection on each arrival and release, so under hundreds of concurrent streams its
CPU per chunk and its tail latency grow with the load (numbers in the README's transport
table, from `python -m benchmarks.concurrency`). aiohttp's pool does O(1) work per
request. Keeping the httpx API keeps the adapters and their respx-mocked tests unchanged.

`httpx_aiohttp.AiohttpTransport` is the same idea, but it maps every connection failure
to `ConnectTimeout` (a reset peer or a server that hung up looked like a slow connect);
this one maps aiohttp's failures to the httpx exceptions that say what happened, which
`providers.http.map_transport_error` turns into error codes.

`PooledClient` is the `httpx.AsyncClient` the adapters get: its `post_streaming` opens a
streaming POST on the aiohttp pool directly, without building httpx's `Request` and
`Response` (URL parsing and header merging per request, its auth, redirect and cookie
layers and its body wrapper: ~5 us per chunk at 500 streams, more at the first token).
It sends what `client.stream()` sends (the client's headers, httpx's defaults
included) and yields the same bytes; anything else (tests inject a respx-mocked plain
`httpx.AsyncClient`) still goes through httpx, so both paths serve the same adapters.
Cookies a provider sets are not kept (an API client has no session to keep).
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "DirectResponse", "PooledClient"]

_READ_SIZE = 64 * 1024


def _mapped(exc: BaseException, *, during_body: bool) -> httpx.HTTPError:
    """The httpx exception that says what an aiohttp failure was."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(text)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(text)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(f"Server disconnected: {text}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        # A body cut short (incomplete chunked read, peer closed) or a malformed one.
        low = text.lower()
        if any(m in low for m in ("not enough data", "not completed", "incomplete", "closed",
                                      "reset")):
            return httpx.RemoteProtocolError(f"peer closed connection mid-body: {text}")
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, aiohttp.ClientResponseError):  # an unparsable status line or header
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError | OSError):
        return httpx.ReadError(text) if during_body else httpx.ConnectError(text)
    return httpx.TransportError(text)


_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)
# The read-timeout check reads no context variable: its timer runs in this one empty
# context instead of a copy of the caller's made per timer.
_TIMER_CONTEXT = contextvars.Context()


class _Body(httpx.AsyncByteStream):
    """The response body, with the read timeout kept lazily: aiohttp's own re-arms a timer
    on every packet (a cancel and a `call_later` per chunk); this one notes the time of
    each read and wakes once per `read_timeout_s` to compare. Its own iterator (no async
    generator: that is two more objects per live stream, one in the loop's weak set)."""

    __slots__ = ("_last", "_loop", "_read", "_read_timeout_s", "_response", "_time", "_timer")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout_s: float | None) -> None:
        self._response = response
        self._read_timeout_s = read_timeout_s
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time
        self._read = response.content.readany
        self._last = self._time()
        self._timer: asyncio.TimerHandle | None = None
        connection = response.connection
        if read_timeout_s and connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None  # from here on, ours
            connection.protocol.start_timeout()  # (drops aiohttp's timer armed meanwhile)
            self._timer = self._loop.call_at(self._last + read_timeout_s, self._check,
                                             context=_TIMER_CONTEXT)

    def _check(self) -> None:
        timeout = self._read_timeout_s
        assert timeout is not None
        deadline = self._last + timeout
        if self._loop.time() >= deadline:
            self._timer = None
            self._response.content.set_exception(
                aiohttp.SocketTimeoutError(f"no data from the server for {timeout:g} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check, context=_TIMER_CONTEXT)

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._read()
        except _FAILURES as exc:
            raise _mapped(exc, during_body=True) from exc
        if not chunk:
            raise StopAsyncIteration
        self._last = self._time()
        return chunk

    def at_eof(self) -> bool:
        """The whole body has been read (`providers.http.drain` need not wait for it)."""
        return self._response.content.at_eof()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Released to the pool if the body was read to its end, else the socket is closed.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp `ClientSession` (made at the first request, inside the running loop)
    with a pool of at most `max_connections`, idle ones kept `keepalive_s`."""

    def __init__(self, *, max_connections: int, keepalive_s: float = 15.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._ssl: ssl.SSLContext | bool = verify if isinstance(verify, ssl.SSLContext) else (
            httpx.create_ssl_context() if verify else False)
        self._session: aiohttp.ClientSession | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                         keepalive_timeout=self._keepalive_s, ssl=self._ssl)
        # No `skip_auto_headers`: httpx's defaults (user agent, accept, accept-encoding)
        # are in every request's headers, so aiohttp adds none of its own; a skip list
        # would cost ~50 us per request (aiohttp sorts it and copies the headers).
        return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar())

    async def open(self, method: str, url: str,
                   headers: Mapping[str, str] | Iterable[tuple[str, str]],
                   content: bytes | None, limits: aiohttp.ClientTimeout
                   ) -> aiohttp.ClientResponse:
        """The response once its head has arrived; aiohttp's failures mapped to httpx's.
        `limits`: the connect and read timeouts, enforced by aiohttp."""
        session = self._session
        if session is None or session.closed:
            session = self._session = self._new_session()
        try:
            return await session.request(method, url, headers=headers, data=content,
                                         allow_redirects=False, timeout=limits)
        except _FAILURES as exc:
            raise _mapped(exc, during_body=False) from exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        timeout = _client_timeout(timeouts.get("pool"), timeouts.get("connect"),
                                  timeouts.get("read"))
        response = await self.open(request.method, str(request.url),
                                   request.headers.multi_items(), request.content or None,
                                   timeout)
        return httpx.Response(response.status, headers=response.raw_headers,
                              stream=_Body(response, timeouts.get("read")), request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _client_timeout(pool: float | None, connect: float | None,
                    read: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=pool, sock_connect=connect, sock_read=read)


class DirectResponse:
    """A streaming response read straight from the pool: what the adapters use of
    `httpx.Response` (`status_code`, `headers`, `aclose()`) and the body as `chunks()`.
    `headers` is aiohttp's case-insensitive multidict."""

    __slots__ = ("_body", "_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout_s: float | None) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers
        self._body = _Body(response, read_timeout_s)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (call once). A content-encoded one (httpx's default
        `accept-encoding` allows gzip) is decoded by httpx, as `aiter_bytes()` would."""
        if "content-encoding" in self.headers:
            wrapped = httpx.Response(self.status_code, headers=self._response.raw_headers,
                                     stream=self._body)
            return wrapped.aiter_bytes()
        return aiter(self._body)

    async def aclose(self) -> None:
        await self._body.aclose()


class PooledClient(httpx.AsyncClient):
    """`httpx.AsyncClient` over an `AiohttpTransport`, plus `post_streaming`. Its headers
    and timeout are read at construction (later changes reach the httpx path only)."""

    def __init__(self, *, max_connections: int, timeout: httpx.Timeout,
                 headers: Mapping[str, str]) -> None:
        self.pool = AiohttpTransport(max_connections=max_connections)
        super().__init__(transport=self.pool, timeout=timeout, headers=headers)
        self._defaults = {k.lower(): v for k, v in self.headers.items()}
        self._read_timeout_s = timeout.read
        self._direct_limits = _client_timeout(timeout.pool, timeout.connect, timeout.read)
        # The last request's headers and their merge with the defaults: an adapter builds
        # its headers once and passes the same mapping to every request.
        self._last: tuple[Mapping[str, str], dict[str, str]] | None = None

    def _merged(self, headers: Mapping[str, str]) -> dict[str, str]:
        last = self._last
        if last is not None and last[0] is headers:
            return last[1]
        merged = self._defaults.copy()
        for name, value in headers.items():
            merged[name.lower()] = value
        self._last = (headers, merged)
        return merged

    async def post_streaming(self, url: str, content: bytes,
                             headers: Mapping[str, str]) -> DirectResponse:
        """POST `content` and return the response once its head arrived, body unread.
        Raises the httpx exception that says what failed. `headers` must not be changed
        once given (the same mapping given again is merged with the defaults once)."""
        response = await self.pool.open("POST", url, self._merged(headers), content,
                                        self._direct_limits)
        return DirectResponse(response, self._read_timeout_s)

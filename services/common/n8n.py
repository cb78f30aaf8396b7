"""Delivering envelopes to n8n: signed when configured, classified for retry.

Every envelope is one POST, so the client's cost per request is on the hot path: aiohttp
spends about a tenth of the CPU httpx does per request here (bench/README.md, "Webhook →
n8n envelope latency")."""

from __future__ import annotations

import asyncio
import contextlib
import random
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

# Answers that mean "try again later" (docs/n8n-contract.md); any other 4xx is final.
_RETRY_STATUSES = frozenset({408, 425, 429})
_JITTER = 0.2
# Enough of an error answer to say what went wrong; the rest is not read.
_ERROR_BODY_BYTES = 2048
# How long the body of a 2xx is waited for, so its connection can be reused.
_DRAIN_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    retry: bool
    detail: str


class N8nClient:
    """POSTs envelopes over one pool of keep-alive connections, opened on first use (an
    aiohttp session belongs to the event loop it was made in). The work pools bound how
    many are in flight, so the pool itself has no limit. A proxy comes from the environment
    (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) as with any HTTP client, looked up once per URL:
    aiohttp's own `trust_env` reads them and ~/.netrc in a thread on every request."""

    def __init__(
        self,
        *,
        auth_header: str,
        signing_secret: str,
        timeout_seconds: float,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}
        self._headers = {"content-type": "application/json"}
        if auth_header:
            name, _, value = auth_header.partition(":")
            self._headers[name.strip()] = value.strip()
        self._signer = Webhook(signing_secret) if signing_secret else None
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _proxy(self, url: str) -> str | None:
        if url not in self._proxies:
            self._proxies[url] = proxy_for(url)
        return self._proxies[url]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, event_id: str, payload: str, request_id: str = "") -> Attempt:
        headers = dict(self._headers)
        if request_id:
            # n8n may send it back on /send-response: the reply then logs under the same id.
            headers["x-request-id"] = request_id
        if self._signer is not None:
            now = datetime.now(UTC)
            headers["webhook-id"] = event_id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = self._signer.sign(event_id, now, payload)
        try:
            async with self._http().post(
                url,
                data=payload.encode(),
                headers=headers,
                timeout=self._timeout,
                proxy=self._proxy(url),
                # Never followed: aiohttp would repeat the POST, auth header and signed
                # envelope included, to whatever host the answer names.
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    # Read to its end (a short answer: "Workflow was started"), so the
                    # connection goes back to the pool: left unread when only the
                    # headers had come, aiohttp closes it, and the next envelope pays for
                    # a new one (a third of them did with the stand-in, issue 22).
                    await _drain(response)
                    return Attempt(True, False, str(status))
                if 300 <= status < 400:
                    return _redirected(url, status, response.headers.get("location", ""))
                body = await response.content.read(_ERROR_BODY_BYTES)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Attempt(False, True, f"n8n unreachable: {type(exc).__name__}")
        text = body.decode(errors="replace")[:200]
        detail = f"n8n answered {status}: {text}"
        return Attempt(False, status >= 500 or status in _RETRY_STATUSES, detail)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a 2xx answer's body, up to _ERROR_BODY_BYTES and for _DRAIN_SECONDS at most:
    a longer or slower one is left, and its connection closed rather than reused. The
    envelope was taken either way."""
    left = _ERROR_BODY_BYTES
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            while left > 0 and not response.content.at_eof():
                chunk = await response.content.read(left)
                if not chunk:
                    return
                left -= len(chunk)


def _redirected(url: str, status: int, location: str) -> Attempt:
    """A 3xx from n8n is a configuration error, not an outage: the webhook URL points at
    something that sends us elsewhere (http → https, a moved instance, a login page, or
    someone else's host). It is not followed (the envelope and the auth header would go
    to that host) and not retried: every retry would get the same answer for hours. The
    envelope is dead-lettered with the target's host, so an operator fixes N8N_*_URL and
    replays it."""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location)) if location else None
    host = (target.netloc.rpartition("@")[2] or "?") if target else "(no Location)"
    return Attempt(False, False, f"n8n answered {status} redirect to {host}: not followed")


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url`, or None (none set, or NO_PROXY)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def next_delay(schedule: list[float], attempts: int) -> float | None:
    """Seconds until the next try after `attempts` failures; None = give up."""
    if attempts >= len(schedule):
        return None
    base = schedule[attempts]
    return max(0.0, base * (1 + random.uniform(-_JITTER, _JITTER)))  # noqa: S311


def new_event_id() -> str:
    return uuid.uuid4().hex

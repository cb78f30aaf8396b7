"""One sandbox: the account, its tokens, its traffic record and the faults switched on."""

from __future__ import annotations

import httpx

from sandbox.kommo.activity import AccountActivity
from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.oauth import TokenAuthority
from sandbox.kommo.responses import JsonDict
from sandbox.kommo.seed import seed
from sandbox.kommo.state import AccountState
from sandbox.kommo.traffic import Faults, SlidingWindowLimiter, TrafficLog
from sandbox.kommo.webhooks import WebhookSender


class Sandbox:
    """Owns every piece of mutable sandbox state; ``reset`` returns it to the seed."""

    def __init__(
        self, config: SandboxConfig, webhook_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.tokens = TokenAuthority(config)
        self.limiter = SlidingWindowLimiter(config.rate_limit_rps)
        self.faults = Faults(block_after_429s=config.block_after_429s)
        self.traffic = TrafficLog()
        self.webhooks = WebhookSender(
            config.webhook_timeout,
            webhook_transport,
            retries=config.webhook_retries,
            retry_delay=config.webhook_retry_delay,
        )
        self.state: AccountState = seed(config)
        self.activity = AccountActivity(config, self.state, self.webhooks)

    def admit_request(self) -> bool:
        """Apply the rate limit to one API call; past it, count towards a block."""
        if self.limiter.admit():
            return True
        self.traffic.rate_limited += 1
        self.faults.note_rate_limited()
        return False

    async def reset(self) -> None:
        """Back to the seed: account data, faults, limits, records.

        Tokens already issued stay valid and the seeded refresh token and code become valid
        again, so a running bridge is not locked out by a test's reset.
        """
        await self.activity.aclose()
        self.state = seed(self.config)
        self.webhooks.reset()
        self.activity = AccountActivity(self.config, self.state, self.webhooks)
        self.limiter = SlidingWindowLimiter(self.config.rate_limit_rps)
        self.faults = Faults(block_after_429s=self.config.block_after_429s)
        self.traffic.reset()
        self.tokens.reset_counters()
        self.tokens.restore_seed_grants()

    def stats(self) -> JsonDict:
        return {
            "requests": self.traffic.total,
            "by_path": dict(self.traffic.by_path),
            "rate_limited_429": self.traffic.rate_limited,
            "token_refreshes": self.tokens.token_refreshes,
            "refused_refresh_tokens": self.tokens.refused_refresh_tokens,
            "code_exchanges": self.tokens.code_exchanges,
            "salesbot_runs": len(self.activity.salesbot_runs),
            "chats_api_sends": self.activity.chats_api_sends,
            "template_sends": self.activity.template_sends,
            "closed_window_sends": len(self.activity.closed_window_sends),
            "max_requests_in_any_second": self.limiter.max_in_any_second,
            "webhooks_sent": self.webhooks.sent,
            "webhook_failures": self.webhooks.failures,
            "webhook_retries": self.webhooks.retried,
            "webhook_retries_pending": self.webhooks.retries_pending,
            "webhooks_given_up": self.webhooks.given_up,
        }

    async def aclose(self) -> None:
        await self.activity.aclose()
        await self.webhooks.aclose()

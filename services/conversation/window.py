"""WhatsApp's customer-service window: when free text can reach a customer at all.

WhatsApp Business (Kommo's `waba` origin), Instagram and Messenger deliver a free-form
message only within 24 hours of the customer's last message; outside it only an approved
template is delivered, and a free-form message is refused by WhatsApp while Kommo's
Salesbot run that sent it was still answered 202 (docs/kommo-api.md). Kommo's QR-code
WhatsApp, Telegram and the site chat have no such window. A customer who never wrote has
no open window.

Pure: no I/O. The conversation service keeps, per conversation, when its customer last
wrote (Kommo's time of the message) and the chat's origin; this module says what that
allows at a given moment.
"""

from __future__ import annotations

from dataclasses import dataclass

# Origins Kommo writes for channels with a 24-hour window (configurable: WINDOW_ORIGINS).
DEFAULT_WINDOW_ORIGINS = "waba,instagram,instagram_business,facebook,messenger"


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """Which channels have a window, how long it lasts, and how much before its end the
    bridge stops counting on it (a message queued at 23:59 may leave after 24:00)."""

    origins: frozenset[str]
    seconds: float = 86400.0
    margin_seconds: float = 600.0
    # A conversation whose channel the bridge does not know yet (no message received:
    # a lead opened for a proactive start) is treated as having a window: the channel
    # most leads use (WhatsApp Business) has one, and a template reaches the others too.
    unknown_origin_has_window: bool = True

    @classmethod
    def parse(
        cls, origins: str, seconds: float, margin_seconds: float, unknown_has_window: bool = True
    ) -> WindowPolicy:
        return cls(
            frozenset(o.strip().lower() for o in origins.split(",") if o.strip()),
            seconds,
            margin_seconds,
            unknown_has_window,
        )

    def applies(self, origin: str) -> bool:
        """Does this channel have a customer-service window at all?"""
        if not origin:
            return self.unknown_origin_has_window
        return origin.lower() in self.origins

    def open_until(self, origin: str, customer_at: float) -> float | None:
        """Until when free text may be sent (Unix seconds, the margin taken off), for a
        customer who last wrote at `customer_at` (0 = never). None: no window on this
        channel, free text always goes."""
        if not self.applies(origin):
            return None
        if customer_at <= 0:
            return 0.0
        return customer_at + self.seconds - self.margin_seconds

    def is_open(self, origin: str, customer_at: float, now: float) -> bool:
        until = self.open_until(origin, customer_at)
        return until is None or now < until


@dataclass(frozen=True, slots=True)
class WindowState:
    """A conversation's window at one moment, as the envelope, the bot status and the
    debug view show it."""

    origin: str
    applies: bool
    open: bool
    open_until: float | None  # Unix seconds; None when the channel has no window
    customer_at: float  # 0 = the customer never wrote (that the bridge knows of)

    def as_json(self) -> dict[str, object]:
        return {
            "origin": self.origin or None,
            "has_window": self.applies,
            "open": self.open,
            "open_until": self.open_until if self.applies else None,
            "customer_last_wrote_at": self.customer_at or None,
        }


def state(policy: WindowPolicy, origin: str, customer_at: float, now: float) -> WindowState:
    until = policy.open_until(origin, customer_at)
    return WindowState(
        origin=origin,
        applies=until is not None,
        open=until is None or now < until,
        open_until=until,
        customer_at=customer_at,
    )

"""Times as status stores them: RFC 3339 strings in UTC, to the millisecond.

The clock is never read here; callers pass ``now``.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(moment: datetime) -> str:
    """``2026-11-23T18:30:00.250Z``; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime | None:
    """The moment in ``text``, or None when it is empty or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_between(start: str, now: datetime) -> float:
    """Seconds from the stored time ``start`` to ``now``; 0 when ``start`` is unset."""
    begun = parse_time(start)
    if begun is None:
        return 0.0
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return (now - begun).total_seconds()

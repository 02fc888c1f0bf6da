"""The site's time tolerances for the validate stage (the `validation:` section)."""

from __future__ import annotations

from datetime import timedelta

from pipeline.site.common import SiteModel
from pipeline.site.durations import Duration, PositiveDuration


class ValidationSpec(SiteModel):
    """How far a reading's timestamp may be from the validator's clock.

    The defaults suit live plants. A replay of recorded data (e.g. `twin evaluate`) needs a
    `max_age` longer than the age of the recording, or every reading is TOO_OLD.
    """

    future_tolerance: Duration = timedelta(seconds=5)
    """A reading stamped later than now + this is FUTURE_TIMESTAMP (clock skew allowance)."""
    max_age: PositiveDuration = timedelta(hours=1)
    """A reading stamped earlier than now - this is TOO_OLD."""
    out_of_order_tolerance: Duration = timedelta(seconds=2)
    """A reading this much earlier than its signal's latest accepted one is OUT_OF_ORDER."""

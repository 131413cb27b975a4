"""How a dialled leg ended, in Vonage's words, from what Asterisk reports.

Asterisk tells us a Q.850 hangup cause (mapped from the far end's SIP status by chan_pjsip) and
a dial status. We map causes, not DIALSTATUS: 486 Busy Here and 603 Decline give different
causes (17 and 21) but 603 gives DIALSTATUS=CHANUNAVAIL, which would wrongly read "failed".
Checked with real SIP agents on Asterisk 22 (tests/integration/test_connect.py).
"""

from __future__ import annotations

import enum


class LegOutcome(enum.Enum):
    ANSWERED = "answered"
    BUSY = "busy"  # 486/600: on another call
    REJECTED = "rejected"  # 603: declined
    TIMEOUT = "timeout"  # still ringing when our ringing timer ran out
    UNANSWERED = "unanswered"  # 480/408 or no response: nobody took it
    FAILED = "failed"  # 404, 5xx, unreachable, bad number
    CANCELLED = "cancelled"  # we stopped ringing it (another leg answered, caller left)

    @property
    def is_failure(self) -> bool:
        """The states that make a synchronous connect ask its eventUrl what to do next."""
        return self in (LegOutcome.BUSY, LegOutcome.REJECTED, LegOutcome.TIMEOUT,
                        LegOutcome.UNANSWERED, LegOutcome.FAILED)


# Q.850 causes (include/asterisk/causes.h).
_BUSY = {17}  # USER_BUSY
_REJECTED = {21}  # CALL_REJECTED
_UNANSWERED = {18, 19, 20}  # NO_USER_RESPONSE, NO_ANSWER, SUBSCRIBER_ABSENT


def outcome_from_cause(cause: int | None, timed_out: bool) -> LegOutcome:
    """The outcome of a leg that never answered.

    ``timed_out`` is True when our own ringing timer ended it (Asterisk reports that as
    NOANSWER with cause 19 or 0, the same as a far end that gave up)."""
    if timed_out:
        return LegOutcome.TIMEOUT
    if cause in _BUSY:
        return LegOutcome.BUSY
    if cause in _REJECTED:
        return LegOutcome.REJECTED
    if cause in _UNANSWERED:
        return LegOutcome.UNANSWERED
    return LegOutcome.FAILED

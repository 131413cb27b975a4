"""The Connect applet's ``recording``: the conversation between the caller and the agent.

No second recorder: this is the NCCO ``record`` action's capture (``CallRecording``: two
snoops on the caller's channel, what the caller says and what the caller hears, which is the
agent once both are in the conversation bridge) and the RecordingService's mixing and storage.
``channels: single`` mixes both parties into one mono file; ``dual`` is one stereo file, the
caller on channel 1 and the agent on channel 2. Files are mp3, as Exotel's recordings are.

Capture starts as the agent is joined and stops when the conversation ends (either party
hangs up, or ``max_conversation_duration``). Fetching, converting and storing then run as a
task of the RecordingService, not of the call, so a hang-up does not lose the file. The file
is kept ``recordings.retention_hours`` whatever the webhooks answer; its URL
(``{public_url}/v1/files/{id}``) goes to the application's event_url in a ``record`` event and
is sent as ``RecordingUrl`` on the applet's later requests.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

import structlog

from bridge.ari.errors import AriError
from bridge.media.recordings import StoredRecording
from bridge.ncco.actions.record import CallRecording
from bridge.ncco.models import Record

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext

log = structlog.get_logger(__name__)

#: Seconds a request that carries ``RecordingUrl`` waits for the file to be stored; past that
#: it goes without (the ``record`` event still brings the URL to event_url).
RECORDING_WAIT_S = 30.0
#: Exotel's recordings are mp3.
FORMAT = "mp3"


def record_action(channels: Literal["single", "dual"]) -> Record:
    """The record action whose capture and layout the conversation's recording uses."""
    layout = {"split": "conversation", "channels": 2} if channels == "dual" else {}
    return Record.model_validate({"action": "record", "format": FORMAT, **layout})


class ConversationRecording:
    """One recorded conversation of one applet run."""

    def __init__(self, call: CallContext, channels: Literal["single", "dual"]) -> None:
        self.call = call
        self.channels = channels
        self.capture = CallRecording(call, record_action(channels))
        self.url: str | None = None
        self._started = False
        self._finished: asyncio.Task[StoredRecording | None] | None = None
        self.log = log.bind(call_uuid=call.uuid, recording_uuid=self.capture.recording_uuid)

    async def start(self) -> bool:
        """Start capturing; False (reported as an error) when Asterisk could not."""
        try:
            await self.capture.start()
        except (AriError, TimeoutError) as exc:
            await asyncio.shield(self.capture.stop())
            if not self.call.gone.is_set():
                self.call.error(f"connect applet: the recording could not be started: {exc}")
            return False
        self._started = True
        self.log.info("connect.recording_started", channels=self.channels)
        return True

    async def end(self) -> None:
        """Stop capturing (idempotent); the file is made and stored beside the call."""
        await self.capture.stop()
        if self._started and self._finished is None:
            self._finished = self.call.services.recordings.run_detached(
                self.capture.finish(), f"connect-record-finish:{self.call.uuid}")

    async def wait_stored(self, timeout_s: float = RECORDING_WAIT_S) -> str | None:
        """The stored file's URL, waiting (bounded) for it; None when there is none."""
        task = self._finished
        if self.url is not None or task is None:
            return self.url
        try:
            stored = await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            self.log.warning("connect.recording_not_ready", waited_s=timeout_s)
            return None
        except Exception as exc:  # the finishing task failed; it is not the call's failure
            self.log.warning("connect.recording_failed", error=repr(exc))
            return None
        if stored is not None:
            self.url = self.call.services.file_url(stored.file_id)
        return self.url


__all__ = ["FORMAT", "RECORDING_WAIT_S", "ConversationRecording", "record_action"]

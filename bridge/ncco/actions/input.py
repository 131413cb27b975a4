"""input: collect the caller's key presses and/or speech, send them to eventUrl, take the reply.

DTMF: digits arrive as RFC 4733 events that Asterisk reports as ChannelDtmfReceived. Digits
pressed during a barge-in prompt are kept in the session's buffer and count as input here.

Speech (``type`` holds ``"speech"``): Asterisk records what the caller sends (ARI channel
recording, WAV) in *segments*; the bridge fetches each stored segment over ARI (no shared
filesystem), deletes it from Asterisk, and the call's ASR provider recognises the speech.

* A segment ends by Asterisk's silence detection (``maxSilenceSeconds`` = ``endOnSilence``
  rounded up to whole seconds, ARI's unit) or its ``maxDurationSeconds`` (``maxDuration``).
* Whether a segment holds speech is decided here, on its audio (20 ms frames above an RMS
  level set by ``sensitivity``), not by Asterisk's whole-second ``talking_duration``.
* A silent segment before ``startTimeout`` is dropped and another one starts. At
  ``startTimeout`` a running segment is stopped and kept: silent -> ``start_timeout``; speech
  -> the caller started in time, so capture goes on in a continuation segment and the parts
  are joined before recognition. (A caller that sends no RTP at all never trips Asterisk's
  silence detection; this is what bounds the wait then.)
* With ``type: ["dtmf", "speech"]`` a key press ends speech capture (the live segment is
  discarded) and the DTMF result is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import WaitOutcome
from bridge.media.asr import (
    AsrError,
    AsrProvider,
    PocketsphinxAsr,
    speech_threshold,
    voiced_seconds,
)
from bridge.ncco.models import Action, Input, NccoError, SpeechSettings
from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext

#: Seconds allowed beyond a segment's own limit for Asterisk to report it finished.
MARGIN_S = 10.0
#: Voiced audio (seconds) a segment needs to count as speech rather than a click or noise.
MIN_SPEECH_S = 0.1

_default_provider: AsrProvider | None = None


def check(action: Input, index: int) -> None:
    """Every combination of dtmf and speech runs; nothing to reject beyond the schema."""
    if not action.type:
        raise NccoError("type must name dtmf, speech or both", f"[{index}].type")


def provider_for(call: CallContext) -> AsrProvider:
    """The bridge's ASR provider (``services.asr``), else the embedded default."""
    global _default_provider
    provider = call.services.asr
    if provider is not None:
        return provider
    if _default_provider is None:
        _default_provider = PocketsphinxAsr()
    return _default_provider


async def collect(call: CallContext, action: Input) -> tuple[str, bool]:
    """Digits until maxDigits, '#' (submitOnHash) or timeOut seconds without a key."""
    settings = action.dtmf
    digits = ""
    while len(digits) < settings.max_digits:
        digit = await call.dtmf.next(settings.time_out)
        if digit is None:
            return digits, True
        if digit == "#" and settings.submit_on_hash:
            return digits, False
        digits += digit
    return digits, False


async def run(call: CallContext, action: Input) -> list[Action] | None:
    payload: dict[str, Any] = {
        "from": call.from_number,
        "to": call.to_number,
        "uuid": call.uuid,
        "conversation_uuid": call.conversation_uuid,
    }
    if "speech" in action.type:
        speech = action.speech or SpeechSettings()
        heard = await listen(call, speech, keys_end_it="dtmf" in action.type)
        if heard is None:
            return None  # the caller hung up
        if heard.keyed:
            digits, timed_out = await collect(call, action)
            payload["dtmf"] = {"digits": digits, "timed_out": timed_out}
            payload["speech"] = {"results": []}
        else:
            payload["dtmf"] = {"digits": None, "timed_out": False}
            payload["speech"] = heard.payload
    else:
        digits, timed_out = await collect(call, action)
        payload["dtmf"] = {"digits": digits, "timed_out": timed_out}
    payload["timestamp"] = ev.timestamp()
    if call.app.legacy_input_payload:
        # The 2017 reference's shape: the digits as a string and timed_out at the top level.
        dtmf = payload["dtmf"]
        payload["dtmf"] = dtmf["digits"] or ""
        payload["timed_out"] = dtmf["timed_out"]
    url = action.event_url[0] if action.event_url else call.app.event_url
    if url is None:
        call.error("input: no eventUrl on the action and no event_url for the application")
        return None
    method = action.event_method if action.event_url else call.app.event_method
    return await call.ask_for_ncco(url, method, payload)


# ------------------------------------------------------------------------------ speech
@dataclass
class Heard:
    keyed: bool = False  # a key press ended it (dtmf + speech)
    payload: dict[str, Any] = field(default_factory=dict)  # the event's "speech" object


@dataclass
class _Segment:
    name: str
    ended: str  # "silence" | "max_duration" | "stopped" | "keyed" | "hangup" | "failed"
    cause: str = ""


async def listen(call: CallContext, speech: SpeechSettings, keys_end_it: bool) -> Heard | None:
    """Capture the caller's speech and recognise it. None if the caller hung up."""
    if keys_end_it and call.dtmf.digits:
        return Heard(keyed=True)  # keys pressed during a barge-in prompt win
    loop = asyncio.get_running_loop()
    start_deadline = loop.time() + speech.start_timeout
    threshold = speech_threshold(speech.sensitivity)
    parts: list[bytes] = []  # 8 kHz 16-bit mono PCM of the voiced capture, in order
    speech_started: float | None = None
    reason = "end_on_silence_timeout"
    with tempfile.TemporaryDirectory(prefix="ari-bridge-speech-") as tmp:
        while True:
            if speech_started is None:
                max_s = speech.max_duration
                stop_at: float | None = start_deadline
            else:
                max_s = speech.max_duration - (loop.time() - speech_started)
                stop_at = None
                if max_s < 0.5:
                    reason = "max_duration"
                    break
            began = loop.time()
            segment = await _record_segment(call, speech, max_s, stop_at, keys_end_it)
            if segment.ended == "hangup":
                return None
            if segment.ended == "keyed":
                return Heard(keyed=True)
            if segment.ended == "failed":
                call.error(f"input: speech recording failed: {segment.cause}")
                return Heard(payload={"error": f"recording failed: {segment.cause}"})
            wav = Path(tmp) / f"{segment.name}.wav"
            try:
                wav.write_bytes(await call.gateway.stored_recording_file(segment.name))
                voiced = voiced_seconds(wav, threshold)
                pcm = _pcm(wav)
            except (AriError, AsrError) as exc:
                if call.gone.is_set():
                    return None
                call.error(f"input: could not fetch the speech recording: {exc}")
                return Heard(payload={"error": f"recording unavailable: {exc}"})
            has_speech = voiced >= MIN_SPEECH_S
            with contextlib.suppress(AriError):
                await call.gateway.delete_stored_recording(segment.name)
            if speech_started is None:
                if not has_speech:
                    if loop.time() >= start_deadline or segment.ended == "stopped":
                        return Heard(payload={"timeout_reason": "start_timeout", "results": []})
                    continue  # silence before startTimeout: listen again
                speech_started = began
            parts.append(pcm)
            if segment.ended == "silence":
                reason = "end_on_silence_timeout"
                break
            if segment.ended == "max_duration":
                reason = "max_duration"
                break
            # "stopped" at startTimeout while the caller was speaking: go on listening.
        joined = Path(tmp) / "speech.wav"
        await asyncio.to_thread(_write_wav, joined, b"".join(parts))
        try:
            hypotheses = await provider_for(call).recognize(
                joined, speech.language, speech.context)
        except AsrError as exc:
            call.error(f"input: {exc}")
            return Heard(payload={"error": str(exc)})
        payload: dict[str, Any] = {
            "timeout_reason": reason,
            "results": [{"confidence": str(h.confidence), "text": h.text} for h in hypotheses],
        }
        if speech.save_audio:
            # What was recognised, as one WAV served like a recording (JWT-authenticated).
            files = call.services.recordings.files
            # Moved into the store off the event loop (a copy when /tmp is another disk).
            file_id = await asyncio.to_thread(files.add, joined, call.app.id)
            payload["recording_url"] = files.url(call.services.public_url(), file_id)
    return Heard(payload=payload)


async def _record_segment(
    call: CallContext, speech: SpeechSettings, max_s: float, stop_at: float | None,
    keys_end_it: bool,
) -> _Segment:
    """One ARI recording: subscribe, start, wait for its end (or stop it at ``stop_at``)."""
    loop = asyncio.get_running_loop()
    name = f"input-{new_id()}"
    max_duration_s = max(1, math.ceil(max_s))
    finished = call.expect(
        lambda e: e.get("type") in ("RecordingFinished", "RecordingFailed")
        and (e.get("recording") or {}).get("name") == name
    )
    keyed = call.expect(lambda e: e.get("type") == "ChannelDtmfReceived") if keys_end_it else None
    live = False
    try:
        began = loop.time()
        try:
            await call.gateway.record(
                call.channel_id, name, max_duration_s=max_duration_s,
                max_silence_s=max(1, math.ceil(speech.end_on_silence)),
            )
        except AriError as exc:
            if call.gone.is_set():
                return _Segment(name, "hangup")
            return _Segment(name, "failed", str(exc))
        live = True
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(finished.wait(max_duration_s + MARGIN_S))]
        if keyed is not None:
            waits.append(asyncio.ensure_future(keyed.wait(None)))
        if stop_at is not None:
            waits.append(asyncio.ensure_future(_sleep_until(stop_at)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if keyed is not None and keyed.future.done() and not finished.future.done():
            if keyed.future.result()[0] is WaitOutcome.HANGUP:
                return _Segment(name, "hangup")
            return _Segment(name, "keyed")
        stopped = False
        if not finished.future.done():  # startTimeout: stop it and keep what it has
            await call.gateway.stop_recording(name)
            stopped = True
        outcome, event = await finished.wait(MARGIN_S)
        live = False
        if outcome is WaitOutcome.HANGUP:
            return _Segment(name, "hangup")
        if outcome is WaitOutcome.TIMEOUT:
            return _Segment(name, "failed", "Asterisk did not finish the recording in time")
        recording = (event or {}).get("recording") or {}
        if (event or {}).get("type") == "RecordingFailed":
            return _Segment(name, "failed", str(recording.get("cause") or "unknown cause"))
        if stopped:
            return _Segment(name, "stopped")
        if loop.time() - began >= max_duration_s - 0.25:
            return _Segment(name, "max_duration")
        return _Segment(name, "silence")
    finally:
        call.stop_waiting(finished)
        if keyed is not None:
            call.stop_waiting(keyed)
        if live and not call.gone.is_set():
            # Cancelled (a new NCCO, a key press): discard the live recording.
            with contextlib.suppress(AriError):
                await asyncio.shield(call.gateway.cancel_recording(name))


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - asyncio.get_running_loop().time()))


def _pcm(wav: Path) -> bytes:
    """The frames of an 8 kHz 16-bit mono WAV (what Asterisk records for format 'wav')."""
    try:
        with wave.open(str(wav), "rb") as w:
            if (w.getframerate(), w.getsampwidth(), w.getnchannels()) != (8000, 2, 1):
                raise AsrError(f"unexpected recording format: {w.getframerate()} Hz, "
                               f"{8 * w.getsampwidth()}-bit, {w.getnchannels()} channel(s)")
            return w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AsrError(f"the recording is not a WAV file ({exc})") from exc


def _write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)

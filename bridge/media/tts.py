"""Text-to-speech providers.

A provider turns text into an 8 kHz mono 16-bit WAV. :class:`EspeakTts` is the
embedded default: no network, no account, fast, intelligible if robotic. Other
engines plug in through the :class:`TtsProvider` protocol.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from bridge.media.audio import convert_to_telephony, run_tool
from bridge.media.errors import MediaError
from bridge.media.voices import Voice, espeak_voice

log = structlog.get_logger(__name__)

# Vonage's limit for a talk action's text, in characters.
MAX_TEXT_CHARS = 1500

# C0 controls other than tab/newline, DEL and C1 controls: espeak-ng would either
# stop at a NUL or read some of them aloud as symbols.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@runtime_checkable
class TtsProvider(Protocol):
    """A TTS engine.

    Attributes:
        name: Stable identifier; part of the media cache key, so change it when a
            setting that alters the audio changes.
    """

    name: str

    async def synthesize(self, text: str, voice: Voice, out_wav: Path) -> None:
        """Speak ``text`` with ``voice`` into ``out_wav`` (WAV, 8 kHz, mono, s16).

        Raises:
            MediaError: synthesis failed; ``cause`` says why.
        """
        ...


class EspeakTts:
    """espeak-ng followed by sox, as asyncio subprocesses.

    The text goes to espeak-ng on stdin, so it never meets a shell, cannot be
    mistaken for an option and does not show up in the process list (talk texts
    can carry one-time codes). Text starting with ``<speak`` is read as SSML.

    Args:
        espeak_bin: espeak-ng executable.
        sox_bin: sox executable.
        timeout_s: Limit for each of the two tool runs, in seconds. 1500
            characters take well under a second on one core; the margin covers a
            loaded host.
    """

    name = "espeak-ng"

    def __init__(
        self, *, espeak_bin: str = "espeak-ng", sox_bin: str = "sox", timeout_s: float = 20.0
    ) -> None:
        self._espeak = espeak_bin
        self._sox = sox_bin
        self._timeout_s = timeout_s
        # Fallbacks are logged once per language, not once per prompt.
        self._reported_fallbacks: set[str] = set()

    async def synthesize(self, text: str, voice: Voice, out_wav: Path) -> None:
        """Speak ``text`` into ``out_wav`` as an 8 kHz mono 16-bit WAV.

        Raises:
            MediaError: ``"text too long"`` (over 1500 characters), ``"empty text"``,
                ``"tts failed"`` (espeak-ng error), ``"transcode failed"``,
                ``"timeout"`` or ``"tool missing"``.
        """
        subject = f"tts {voice.language}"
        if len(text) > MAX_TEXT_CHARS:
            raise MediaError(
                "text too long", f"{subject}: text has {len(text)} characters, max {MAX_TEXT_CHARS}"
            )
        clean = _CONTROL_CHARS.sub(" ", text)
        if not clean.strip():
            raise MediaError("empty text", f"{subject}: nothing to say")

        ev = espeak_voice(voice)
        if ev.fallback and voice.language not in self._reported_fallbacks:
            self._reported_fallbacks.add(voice.language)
            log.warning("tts_voice_fallback", language=voice.language, detail=ev.fallback)

        argv: list[str | Path] = [self._espeak, "-v", ev.arg, "-b", "1"]
        if clean.lstrip().startswith("<speak"):
            argv.append("-m")
        started = time.perf_counter()
        # espeak-ng writes 22.05 kHz; the intermediate file lives next to the
        # output so a crash leaves debris in the media dir, not in /tmp.
        with tempfile.TemporaryDirectory(dir=out_wav.parent, prefix=".espeak-") as tmp:
            raw = Path(tmp) / "raw.wav"
            await run_tool(
                [*argv, "-w", raw, "--stdin"],
                stdin=clean.encode("utf-8"),
                timeout_s=self._timeout_s,
                failure_cause="tts failed",
                subject=f"{subject} ({ev.arg})",
            )
            await convert_to_telephony(
                raw, out_wav, timeout_s=self._timeout_s, subject=subject, sox_bin=self._sox
            )
        log.debug(
            "tts_synthesized",
            provider=self.name,
            voice=ev.arg,
            chars=len(text),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

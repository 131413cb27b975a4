"""Speech recognition (ASR) providers for ``input`` with ``type: ["speech"]``.

A provider turns a WAV file (what Asterisk recorded from the caller: 8 kHz, mono, 16-bit)
into hypotheses, best first, each with a confidence between 0 and 1. :class:`PocketsphinxAsr`
is the embedded default: PocketSphinx 5 with the US English model its wheel ships, so it runs
offline, with no account and no download. Other engines plug in through :class:`AsrProvider`.

How the default recognises (and why):

* The shipped acoustic model is trained on 16 kHz speech; telephone audio is 8 kHz. The
  recording is resampled to 16 kHz with sox before decoding. Words whose sound
  lives mostly above 4 kHz (``s``, ``f``, ``th``) are recognised poorly: that part of the
  spectrum never reached the call.
* Every recording is decoded with the model's general language model (free text).
* When the action has ``context`` hints, the recording is decoded a second time with a small
  grammar: any sequence of the hints' words and a few carrier words ("I want to talk to ...").
  Hint words found that way become their own result with the word posteriors as confidence.
  On telephone audio this is far more accurate than the free decode for menu words.
* Confidence is the mean posterior probability of the hypothesis' words (from the decoder's
  lattice). Free-text posteriors are low even when right; grammar posteriors are sharp.

Decoding runs in a worker thread (``asyncio.to_thread``); each thread keeps its own decoder,
because loading the model takes a few hundred milliseconds and a decoder is not thread-safe.
"""

from __future__ import annotations

import array
import asyncio
import math
import re
import subprocess
import sys
import threading
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

log = structlog.get_logger(__name__)

#: Words that carry a request around a menu word; part of every hint grammar, never reported.
CARRIER_WORDS = ("i", "want", "to", "talk", "speak", "with", "the", "a", "an", "please", "my",
                 "is", "it", "uh", "um", "yes", "no", "like", "would")


class AsrError(Exception):
    """Recognition could not run (unsupported language, unreadable audio, engine failure)."""


@dataclass(frozen=True)
class Hypothesis:
    """One transcription. ``confidence`` is 0..1."""

    text: str
    confidence: float


@runtime_checkable
class AsrProvider(Protocol):
    """A speech recogniser.

    Attributes:
        name: Stable identifier, for logs.
    """

    name: str

    def supports(self, language: str) -> bool:
        """Whether ``language`` (BCP 47, e.g. ``en-US``) can be recognised."""
        ...

    async def recognize(
        self, wav: Path, language: str, context: Sequence[str]
    ) -> list[Hypothesis]:
        """Hypotheses for the speech in ``wav``, best first; empty when nothing was understood.

        Raises:
            AsrError: recognition could not run; the message says why.
        """
        ...


# ------------------------------------------------------------------------ audio helpers
def read_pcm16_mono(path: Path) -> tuple[array.array[int], int]:
    """The samples and rate of a 16-bit mono PCM WAV.

    Raises:
        AsrError: not such a file.
    """
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise AsrError(f"{path.name}: need 16-bit mono PCM, got "
                               f"{8 * w.getsampwidth()}-bit, {w.getnchannels()} channel(s)")
            rate = w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise AsrError(f"{path.name}: not a readable WAV file ({exc})") from exc
    samples = array.array("h")
    samples.frombytes(frames)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples, rate


#: RMS level (of 32767) above which a 20 ms frame counts as speech, at sensitivity 50.
DEFAULT_SPEECH_RMS = 400.0


def speech_threshold(sensitivity: int | None) -> float:
    """Map Vonage's ``sensitivity`` (0..100, higher hears quieter speech) to an RMS level.

    0 -> 1600, 50 -> 400, 100 -> 100 (a factor of 2 per 25 points); None means 50."""
    if sensitivity is None:
        return DEFAULT_SPEECH_RMS
    return DEFAULT_SPEECH_RMS * 2 ** ((50 - sensitivity) / 25)


def voiced_seconds(path: Path, threshold: float = DEFAULT_SPEECH_RMS,
                   frame_ms: int = 20) -> float:
    """Seconds of ``frame_ms`` frames whose RMS exceeds ``threshold``: how much speech (or
    any sound) the recording holds. A silent caller gives 0.

    Raises:
        AsrError: not a 16-bit mono WAV.
    """
    samples, rate = read_pcm16_mono(path)
    size = max(1, rate * frame_ms // 1000)
    voiced = 0
    for start in range(0, len(samples) - size + 1, size):
        frame = samples[start:start + size]
        if math.sqrt(sum(s * s for s in frame) / size) > threshold:
            voiced += 1
    return voiced * frame_ms / 1000.0


def trim_silence(samples: array.array[int], rate: int, threshold: float = DEFAULT_SPEECH_RMS,
                 margin_s: float = 0.1) -> array.array[int]:
    """``samples`` from ``margin_s`` before the first sample louder than ``threshold`` to
    ``margin_s`` after the last one (padded with silence where the recording is shorter);
    empty when no sample is that loud. Cut at the sound itself, not on a frame grid, so the
    same speech gives the same audio, and the same hypotheses, however much silence came
    before it."""
    loud = [i for i, s in enumerate(samples) if abs(s) > threshold]
    if not loud:
        return array.array("h")
    margin = int(margin_s * rate)
    first, last = loud[0] - margin, loud[-1] + 1 + margin
    out = array.array("h", bytes(2 * max(0, -first)))  # padded to the full margin
    out.extend(samples[max(0, first):min(len(samples), last)])
    out.extend(array.array("h", bytes(2 * max(0, last - len(samples)))))
    return out


# ----------------------------------------------------------------------- pocketsphinx
_WORD = re.compile(r"[a-z']+")
_FILLER = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+)$")


def _clean(word: str) -> str:
    """'want(2)' -> 'want'; fillers ('<sil>', '[NOISE]') -> ''."""
    if _FILLER.match(word):
        return ""
    return word.split("(", 1)[0]


class PocketsphinxAsr:
    """PocketSphinx 5 with its bundled US English model, in worker threads.

    Args:
        languages: Language prefixes accepted (the bundled model is US English; other English
            variants are close enough to be useful).
        sox_bin: sox executable, which resamples telephone audio to the model's 16 kHz.
        timeout_s: Limit for that resampling.
    """

    name = "pocketsphinx"

    def __init__(self, languages: Sequence[str] = ("en",), *, sox_bin: str = "sox",
                 timeout_s: float = 30.0) -> None:
        self._sox = sox_bin
        self._timeout_s = timeout_s
        self._languages = tuple(lang.lower() for lang in languages)
        self._local = threading.local()

    def supports(self, language: str) -> bool:
        lang = language.lower()
        return any(lang == p or lang.startswith(p + "-") for p in self._languages)

    async def recognize(
        self, wav: Path, language: str, context: Sequence[str]
    ) -> list[Hypothesis]:
        if not self.supports(language):
            raise AsrError(f"speech language {language!r} is not supported by the {self.name} "
                           f"recognizer (supported: {', '.join(self._languages)})")
        return await asyncio.to_thread(self.recognize_sync, wav, list(context))

    # The blocking part, public so that benchmarks and tests can call it directly.
    def recognize_sync(self, wav: Path, context: list[str]) -> list[Hypothesis]:
        data = self._pcm16k(wav)
        if len(data) < 3200:  # under 0.1 s: nothing to recognise
            return []
        decoder = self._decoder()
        results: list[Hypothesis] = []
        try:
            free = self._decode(decoder, data, "_lm")
            if free is not None:
                results.append(free)
            hints = self._hint_words(decoder, context)
            if hints:
                grammar = _hint_grammar(hints)
                decoder.add_jsgf_string("hints", grammar)
                spotted = self._decode(decoder, data, "hints", keep=set(hints))
                if spotted is not None:
                    results.append(spotted)
        except RuntimeError as exc:  # the engine reports failures as RuntimeError
            raise AsrError(f"speech recognition failed: {exc}") from exc
        results.sort(key=lambda h: h.confidence, reverse=True)
        unique: list[Hypothesis] = []
        for hyp in results:
            if all(hyp.text != u.text for u in unique):
                unique.append(hyp)
        return unique

    def _pcm16k(self, wav: Path) -> bytes:
        """The recording's speech as raw 16 kHz 16-bit mono: silence before and after it is
        trimmed (long digital silence derails the decoder's noise and mean estimates), then
        sox resamples it (a band-limited resampler: naive interpolation leaves mirror images
        above 4 kHz that the model hears as hiss)."""
        samples, rate = read_pcm16_mono(wav)
        samples = trim_silence(samples, rate)
        raw = samples.tobytes() if sys.byteorder == "little" else _swapped(samples)
        if rate == 16000 or not raw:
            return raw
        try:
            proc = subprocess.run(
                # -D: no dither (sox's default adds random noise; a recording must give the
                # same hypotheses every time).
                [self._sox, "-q", "-D", "-t", "raw", "-r", str(rate), "-e", "signed", "-b", "16",
                 "-c", "1", "-L", "-", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16",
                 "-c", "1", "-L", "-"],
                input=raw, capture_output=True, timeout=self._timeout_s, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AsrError(f"resampling {wav.name} failed: {exc}") from exc
        if proc.returncode != 0:
            raise AsrError(f"resampling {wav.name} failed: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
        return proc.stdout

    def _decoder(self) -> Any:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            from pocketsphinx import Decoder  # type: ignore[import-untyped]

            decoder = Decoder(samprate=16000, loglevel="FATAL")
            decoder.add_lm("_lm", decoder.get_lm())  # the default search, kept by name
            self._local.decoder = decoder
        return decoder

    @staticmethod
    def _hint_words(decoder: Any, context: list[str]) -> list[str]:
        """The hints' words that the pronunciation dictionary knows."""
        words: list[str] = []
        for hint in context:
            for word in _WORD.findall(hint.lower()):
                if word not in words and decoder.lookup_word(word) is not None:
                    words.append(word)
        return words

    @staticmethod
    def _decode(decoder: Any, data: bytes, search: str,
                keep: set[str] | None = None) -> Hypothesis | None:
        decoder.activate_search(search)
        # The cepstral mean carries over from the last utterance; start each one from the
        # model's own, so a recording gives the same hypotheses whatever was decoded before.
        decoder.reinit_feat()
        decoder.set_cmn(decoder.config["cmninit"])
        decoder.start_utt()
        decoder.process_raw(data, full_utt=True)
        decoder.end_utt()
        if decoder.hyp() is None:
            return None
        words: list[tuple[str, float]] = []
        for seg in decoder.seg():
            word = _clean(seg.word)
            if word and (keep is None or word in keep):
                words.append((word, float(seg.prob)))
        if not words:
            return None
        confidence = sum(p for _, p in words) / len(words)
        return Hypothesis(" ".join(w for w, _ in words), round(min(max(confidence, 0.0), 1.0), 4))


def _hint_grammar(hint_words: list[str]) -> str:
    vocabulary = sorted(set(hint_words) | set(CARRIER_WORDS))
    return ("#JSGF V1.0;\ngrammar hints;\npublic <utterance> = <word>*;\n"
            f"<word> = {' | '.join(vocabulary)};\n")


def _swapped(samples: array.array[int]) -> bytes:
    copy = array.array("h", samples)
    copy.byteswap()
    return copy.tobytes()

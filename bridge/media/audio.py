"""Audio helpers shared by TTS and downloads: the target format, WAV inspection,
gain mapping and running the external tools (sox, ffmpeg, espeak-ng).

Everything the bridge hands to Asterisk is WAV, 8 kHz, 16-bit signed
little-endian, mono: the one format Asterisk's ``format_wav`` plays without
transcoding (it becomes ``slin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.media.errors import MediaError

SAMPLE_RATE_HZ = 8000
CHANNELS = 1
SAMPLE_WIDTH_BYTES = 2

# Vonage's ``level`` spans -1..1; each unit is this many dB. +-10 dB is a clearly
# audible but not destructive change (about x3.2 / x0.32 in amplitude).
DB_PER_LEVEL_UNIT = 10.0

# How much of a failing tool's stderr goes into the error message (characters);
# ffmpeg in particular can print a lot for garbage input.
_STDERR_TAIL_CHARS = 400


@dataclass(frozen=True)
class WavInfo:
    """Header facts of a PCM WAV file.

    Attributes:
        rate_hz: Sample rate in Hz.
        channels: Channel count.
        sample_width_bytes: Bytes per sample per channel.
        frames: Number of sample frames.
    """

    rate_hz: int
    channels: int
    sample_width_bytes: int
    frames: int

    @property
    def duration_s(self) -> float:
        """Play time in seconds."""
        return self.frames / self.rate_hz if self.rate_hz else 0.0

    @property
    def is_telephony(self) -> bool:
        """True for 8 kHz mono 16-bit, i.e. playable by Asterisk as is."""
        return (self.rate_hz, self.channels, self.sample_width_bytes) == (
            SAMPLE_RATE_HZ,
            CHANNELS,
            SAMPLE_WIDTH_BYTES,
        )


def read_wav_info(path: Path) -> WavInfo:
    """Read the header of the PCM WAV at ``path``.

    Raises:
        ValueError: not a PCM WAV the ``wave`` module understands.
        OSError: the file cannot be read.
    """
    try:
        with wave.open(str(path), "rb") as w:
            return WavInfo(w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path.name}: not a PCM WAV file ({exc})") from exc


def normalise_level(level: float) -> float:
    """Validate a Vonage ``level`` and round it to its 0.1 precision.

    Raises:
        ValueError: ``level`` is outside -1..1 or not a finite number.
    """
    if isinstance(level, bool) or not isinstance(level, int | float) or not math.isfinite(level):
        raise ValueError(f"level {level!r} must be a number between -1 and 1")
    if not -1.0 <= level <= 1.0:
        raise ValueError(f"level {level!r} must be between -1 and 1")
    # "+ 0.0" turns -0.0 (from e.g. -0.04) into 0.0 so both share a cache key.
    return round(level, 1) + 0.0


def level_to_gain_db(level: float) -> float:
    """Map a Vonage ``level`` to a gain in dB.

    ``level`` is -1..1 with a precision of 0.1 and 0 meaning "unchanged"; it is
    rounded to that precision and scaled linearly by :data:`DB_PER_LEVEL_UNIT`, so
    -1 -> -10 dB, -0.5 -> -5 dB, 0 -> 0 dB, +1 -> +10 dB. Positive gains are applied
    with a limiter (see :func:`convert_to_telephony`) so loud sources do not clip.

    Raises:
        ValueError: ``level`` is outside -1..1 or not a finite number.
    """
    # Rounded again so 0.3 gives 3.0 dB, not 3.0000000000000004.
    return round(normalise_level(level) * DB_PER_LEVEL_UNIT, 6) + 0.0


async def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout_s: float,
    failure_cause: str,
    subject: str,
    url: str | None = None,
    stdin: bytes | None = None,
) -> None:
    """Run an external tool without a shell and wait for it.

    Args:
        argv: Program and arguments; never passed through a shell.
        timeout_s: Wall-clock limit in seconds; the process is killed after it.
        failure_cause: ``MediaError.cause`` when the tool exits non-zero.
        subject: What is being processed (a URL or a voice), for the message.
        url: Source URL to attach to the error, if any.
        stdin: Bytes fed to the tool's standard input (stdin is empty otherwise).

    Raises:
        MediaError: ``failure_cause`` on non-zero exit, ``"timeout"`` when the
            limit passes, ``"tool missing"`` when the program is not installed.
    """
    tool = os.fspath(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise MediaError("tool missing", f"{subject}: {tool} is not installed", url=url) from exc
    try:
        try:
            _, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
        except TimeoutError:
            raise MediaError(
                "timeout", f"{subject}: {tool} did not finish within {timeout_s:g} s", url=url
            ) from None
    finally:
        # Also reached on cancellation (the call hung up): never leave a tool
        # running, and reap it so no zombie is left behind.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-_STDERR_TAIL_CHARS:]
        raise MediaError(
            failure_cause,
            f"{subject}: {tool} exited with status {proc.returncode}: {detail or 'no output'}",
            url=url,
        )


async def convert_to_telephony(
    src: Path,
    dst: Path,
    *,
    gain_db: float = 0.0,
    timeout_s: float,
    subject: str,
    url: str | None = None,
    sox_bin: str = "sox",
) -> None:
    """Resample/downmix a WAV to 8 kHz mono 16-bit with sox, applying a gain.

    Args:
        src: Input WAV (any rate, channels, width sox reads).
        dst: Output path; written as WAV whatever its extension.
        gain_db: Gain in dB; positive gains go through sox's limiter (``gain -l``)
            so peaks are compressed instead of clipping.
        timeout_s: Limit for the sox run, in seconds.
        subject: What is being processed, for error messages.
        url: Source URL to attach to errors, if any.
        sox_bin: sox executable.

    Raises:
        MediaError: ``"transcode failed"`` (or ``"timeout"``/``"tool missing"``).
    """
    effects: list[str] = []
    if gain_db > 0:
        effects = ["gain", "-l", f"{gain_db:g}"]
    elif gain_db < 0:
        effects = ["gain", f"{gain_db:g}"]
    await run_tool(
        [
            sox_bin, "-q", "-V1", src,
            "-t", "wav", "-r", str(SAMPLE_RATE_HZ), "-c", str(CHANNELS),
            "-b", str(SAMPLE_WIDTH_BYTES * 8), "-e", "signed-integer", dst,
            *effects,
        ],
        timeout_s=timeout_s,
        failure_cause="transcode failed",
        subject=subject,
        url=url,
    )  # fmt: skip

"""The media store: every file Asterisk plays for ``talk`` and ``stream``.

Asterisk fetches ``{public_url}/media/{media_id}.wav`` through its HTTP media
cache and plays it with ``format_wav``, so each item here is a WAV, 8 kHz, mono,
16-bit signed, named by the sha256 of what produced it. Same inputs -> same id ->
no work the second time; concurrent requests for one id share one production.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import aiohttp
import structlog
import yarl

from bridge.media.audio import (
    SAMPLE_RATE_HZ,
    convert_to_telephony,
    level_to_gain_db,
    normalise_level,
    read_wav_info,
    run_tool,
)
from bridge.media.errors import MediaError
from bridge.media.tts import TtsProvider
from bridge.media.voices import Voice

__all__ = ["MediaError", "MediaItem", "MediaStore"]

log = structlog.get_logger(__name__)

_MEDIA_ID = re.compile(r"[0-9a-f]{64}")
# Bumped when the produced audio changes for the same inputs (new resampler,
# different gain law...), so stale cached files are not served.
_PIPELINE_VERSION = 1
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class MediaItem:
    """A playable file.

    Attributes:
        media_id: 64 lowercase hex characters; the file is ``{media_id}.wav``.
        path: Absolute path of the WAV in the store.
        duration_s: Play time in seconds, from the WAV header.
    """

    media_id: str
    path: Path
    duration_s: float


@dataclass
class _Flight:
    """One in-progress production and how many callers are waiting for it."""

    task: asyncio.Task[MediaItem]
    waiters: int = 0
    # Set when the last waiter left and the task was told to stop; a newcomer
    # must then start afresh instead of inheriting that cancellation.
    abandoned: bool = False


class MediaStore:
    """Content-addressed cache of telephony WAVs made by TTS or downloaded.

    Args:
        root: Directory holding the files (created if missing).
        tts: Provider used by :meth:`tts`.
        max_download_bytes: Largest source file :meth:`fetch` accepts, in bytes
            (after HTTP content decoding).
        fetch_timeout_s: Limit for a whole download (connect + body), in seconds.
        transcode_timeout_s: Limit for decoding/resampling one file, in seconds.
        session: aiohttp session to download with; by default the store opens its
            own and closes it in :meth:`close`.
    """

    def __init__(
        self,
        root: Path,
        tts: TtsProvider,
        *,
        max_download_bytes: int = 20 * 1024 * 1024,
        fetch_timeout_s: float = 10.0,
        transcode_timeout_s: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        ffmpeg_bin: str = "ffmpeg",
        sox_bin: str = "sox",
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tts = tts
        self._max_download_bytes = max_download_bytes
        self._fetch_timeout_s = fetch_timeout_s
        self._transcode_timeout_s = transcode_timeout_s
        self._session = session
        self._own_session = session is None
        self._ffmpeg = ffmpeg_bin
        self._sox = sox_bin
        self._flights: dict[str, _Flight] = {}
        # Files already seen (path and duration), so cache hits skip re-reading headers.
        self._known: dict[str, MediaItem] = {}
        # Media ids of texts already spoken: the digest (a canonical JSON and a sha256) is
        # then computed once per text, not on every talk.
        self._tts_ids: dict[tuple[str, Voice, str, float], str] = {}

    # --- public API -----------------------------------------------------------

    async def tts(self, text: str, voice: Voice, level: float = 0.0) -> MediaItem:
        """Speak ``text`` with ``voice``; cached by (provider, voice, text, level).

        Args:
            text: What to say (at most 1500 characters for the default provider).
            voice: Resolved voice (see :func:`bridge.media.voices.resolve_voice`).
            level: Vonage volume, -1..1 in steps of 0.1, 0 = unchanged; mapped to
                ``level * 10`` dB (see :func:`bridge.media.audio.level_to_gain_db`).

        Raises:
            ValueError: ``level`` out of range.
            MediaError: synthesis failed.
        """
        level = normalise_level(level)
        key = (self._tts.name, voice, text, level)
        media_id = self._tts_ids.get(key)
        if media_id is None:
            media_id = _digest(
                kind="tts", provider=self._tts.name, voice=asdict(voice), text=text, level=level
            )
            if len(self._tts_ids) >= _MAX_REMEMBERED_TEXTS:
                self._tts_ids.clear()
            self._tts_ids[key] = media_id

        async def produce(tmp_dir: Path, out: Path) -> None:
            raw = tmp_dir / "tts.wav"
            await self._tts.synthesize(text, voice, raw)
            subject = f"tts {voice.language}"
            try:
                info = read_wav_info(raw)
            except (ValueError, OSError) as exc:
                raise MediaError("tts failed", f"{subject}: provider wrote no valid WAV") from exc
            if info.is_telephony and level == 0:
                os.replace(raw, out)
            else:
                # A provider that ignores the format contract, or a level to
                # apply: one sox pass fixes both.
                await convert_to_telephony(
                    raw,
                    out,
                    gain_db=level_to_gain_db(level),
                    timeout_s=self._transcode_timeout_s,
                    subject=subject,
                    sox_bin=self._sox,
                )

        return await self._get_or_produce(media_id, produce)

    async def fetch(self, url: str, level: float = 0.0) -> MediaItem:
        """Download an mp3 or wav and convert it to a telephony WAV.

        Cached by (url, level) for the life of the store directory. Honouring the
        source's HTTP caching headers (ETag/Last-Modified revalidation, max-age)
        would be a later refinement; today a changed file at the same URL needs a
        new URL (e.g. a query string) to be picked up.

        Args:
            url: ``http://`` or ``https://`` address of an mp3 or wav file.
            level: Vonage volume, -1..1 in steps of 0.1; ``level * 10`` dB.

        Raises:
            ValueError: ``level`` out of range.
            MediaError: ``cause`` is ``"bad url"``, ``"http <status>"``,
                ``"unreachable"``, ``"timeout"``, ``"too large"``,
                ``"download failed"``, ``"not audio"`` or ``"transcode failed"``.
        """
        level = normalise_level(level)
        parsed = _parse_url(url)
        media_id = _digest(kind="fetch", url=url, level=level)

        async def produce(tmp_dir: Path, out: Path) -> None:
            src = tmp_dir / "source"
            content_type = await self._download(parsed, url, src)
            await self._decode(src, out, url, content_type, level_to_gain_db(level), tmp_dir)

        return await self._get_or_produce(media_id, produce)

    def path_for(self, media_id: str) -> Path | None:
        """The file for ``media_id`` if it exists, for the HTTP handler.

        Only 64 lowercase hex characters are accepted, so nothing outside the
        store root can be named (no ``..``, separators or alternate spellings).
        """
        if not isinstance(media_id, str) or not _MEDIA_ID.fullmatch(media_id):
            return None
        path = self._final_path(media_id)
        return path if path.is_file() else None

    async def close(self) -> None:
        """Cancel productions in progress and close the owned HTTP session."""
        flights = [f.task for f in self._flights.values()]
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> MediaStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- single flight + atomic writes ----------------------------------------

    def _final_path(self, media_id: str) -> Path:
        return self.root / f"{media_id}.wav"

    def _cached(self, media_id: str) -> MediaItem | None:
        known = self._known.get(media_id)
        if known is not None:
            # The usual hit (a prompt every call plays): one stat, no path arithmetic.
            if os.path.isfile(known.path):
                return known
            # Deleted behind our back (cache pruning): forget it.
            del self._known[media_id]
            return None
        path = self._final_path(media_id)
        if not path.is_file():
            return None
        try:
            duration = read_wav_info(path).duration_s
        except (ValueError, OSError):
            return None
        item = self._known[media_id] = MediaItem(media_id, path, duration)
        return item

    async def _get_or_produce(
        self, media_id: str, produce: Callable[[Path, Path], Awaitable[None]]
    ) -> MediaItem:
        """Return the cached item or make it, at most once at a time per id.

        The production runs as its own task that every concurrent caller awaits
        through :func:`asyncio.shield`: a failure reaches all of them (a dead URL
        is tried once, not once per waiting leg), one caller being cancelled (a
        hang-up) does not cancel the others, and when the last waiter leaves the
        work is cancelled since nobody wants it.
        """
        item = self._cached(media_id)
        if item is not None:
            return item
        flight = self._flights.get(media_id)
        if flight is None or flight.abandoned:
            task = asyncio.create_task(
                self._produce(media_id, produce), name=f"media-{media_id[:12]}"
            )
            flight = self._flights[media_id] = _Flight(task)
            task.add_done_callback(functools.partial(self._flight_done, media_id))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.abandoned = True
                flight.task.cancel()

    def _flight_done(self, media_id: str, task: asyncio.Task[MediaItem]) -> None:
        flight = self._flights.get(media_id)
        if flight is not None and flight.task is task:
            del self._flights[media_id]
        # Mark the exception retrieved: if every waiter was cancelled at the
        # moment the task failed, nobody else would, and asyncio would log it.
        if not task.cancelled():
            task.exception()

    async def _produce(
        self, media_id: str, produce: Callable[[Path, Path], Awaitable[None]]
    ) -> MediaItem:
        # Another process sharing the directory may have finished meanwhile.
        item = self._cached(media_id)
        if item is not None:
            return item
        final = self._final_path(media_id)
        # Work happens in a hidden scratch dir inside root so the last step is a
        # same-filesystem rename: readers see the whole file or none of it.
        with tempfile.TemporaryDirectory(dir=self.root, prefix=f".{media_id[:12]}-") as tmp:
            tmp_dir = Path(tmp)
            out = tmp_dir / "out.wav"
            await produce(tmp_dir, out)
            try:
                info = read_wav_info(out)
            except (ValueError, OSError) as exc:
                raise MediaError("transcode failed", f"{media_id}: output is not a WAV") from exc
            if not info.is_telephony:
                raise MediaError(
                    "transcode failed",
                    f"{media_id}: output is {info.rate_hz} Hz, {info.channels} ch, "
                    f"{info.sample_width_bytes * 8} bit; wanted {SAMPLE_RATE_HZ} Hz mono 16 bit",
                )
            os.replace(out, final)
        item = self._known[media_id] = MediaItem(media_id, final, info.duration_s)
        return item

    # --- downloads ------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "ari-bridge"})
        return self._session

    async def _download(self, parsed: yarl.URL, url: str, dest: Path) -> str:
        """Stream ``url`` into ``dest`` within the size and time limits.

        Returns:
            The response's media type (``"audio/mpeg"``...), possibly empty.
        """
        timeout = aiohttp.ClientTimeout(total=self._fetch_timeout_s)
        cap = self._max_download_bytes
        try:
            async with self._get_session().get(parsed, timeout=timeout) as resp:
                if resp.status != 200:
                    raise MediaError(
                        f"http {resp.status}", f"{url}: server answered HTTP {resp.status}", url=url
                    )
                # Refuse early when the server announces the size; the running
                # count below still guards chunked and compressed bodies.
                if resp.content_length is not None and resp.content_length > cap:
                    raise _too_large(url, cap)
                received = 0
                # Chunks are small and the disk is local; plain writes keep it simple.
                with dest.open("wb") as f:
                    async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
                        received += len(chunk)
                        if received > cap:
                            raise _too_large(url, cap)
                        f.write(chunk)
                return resp.content_type or ""
        except TimeoutError as exc:
            raise MediaError(
                "timeout", f"{url}: no complete answer within {self._fetch_timeout_s:g} s", url=url
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise MediaError("unreachable", f"{url}: cannot connect ({exc})", url=url) from exc
        except aiohttp.ClientError as exc:
            raise MediaError("download failed", f"{url}: download failed ({exc})", url=url) from exc

    async def _decode(
        self, src: Path, out: Path, url: str, content_type: str, gain_db: float, tmp_dir: Path
    ) -> None:
        """Decode the downloaded ``src`` into ``out`` (8 kHz mono s16 WAV)."""
        fmt = _sniff_format(src, content_type)
        if fmt is None:
            raise MediaError("not audio", f"{url}: not an mp3 or wav file", url=url)
        decoded = out if gain_db == 0 else tmp_dir / "decoded.wav"
        # The demuxer is forced and only local files are readable: untrusted input
        # must not be able to turn ffmpeg into a playlist/concat reader that opens
        # other files or URLs.
        await run_tool(
            [
                self._ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
                "-protocol_whitelist", "file", "-format_whitelist", fmt,
                "-f", fmt, "-i", src,
                "-map", "0:a:0", "-vn", "-map_metadata", "-1", "-bitexact",
                "-ac", "1", "-ar", str(SAMPLE_RATE_HZ), "-c:a", "pcm_s16le",
                "-f", "wav", "-y", decoded,
            ],
            timeout_s=self._transcode_timeout_s,
            failure_cause="not audio",
            subject=url,
            url=url,
        )  # fmt: skip
        try:
            frames = read_wav_info(decoded).frames
        except (ValueError, OSError) as exc:
            raise MediaError("not audio", f"{url}: decoder produced no audio", url=url) from exc
        if frames == 0:
            raise MediaError("not audio", f"{url}: contains no audio", url=url)
        if gain_db != 0:
            await convert_to_telephony(
                decoded,
                out,
                gain_db=gain_db,
                timeout_s=self._transcode_timeout_s,
                subject=url,
                url=url,
                sox_bin=self._sox,
            )


#: Texts whose media id is remembered (a bound on memory, not on the cache of files).
_MAX_REMEMBERED_TEXTS = 4096


def _digest(**fields: object) -> str:
    """sha256 over a canonical JSON of ``fields`` (plus the pipeline version)."""
    blob = json.dumps(
        {"v": _PIPELINE_VERSION, **fields},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _parse_url(url: str) -> yarl.URL:
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError) as exc:
        raise MediaError("bad url", f"{url!r}: not a URL", url=str(url)) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise MediaError("bad url", f"{url}: only http and https URLs can be played", url=url)
    return parsed


def _too_large(url: str, cap: int) -> MediaError:
    return MediaError("too large", f"{url}: larger than {cap} bytes", url=url)


def _sniff_format(path: Path, content_type: str) -> str | None:
    """``"wav"``, ``"mp3"`` or ``None``, from the file's first bytes.

    Content is trusted over the Content-Type header, which servers often get
    wrong (``application/octet-stream``); the header only breaks the tie for an
    mp3 without an ID3 tag whose first bytes are not a frame sync.
    """
    with path.open("rb") as f:
        head = f.read(12)
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    # MPEG audio frame sync: 11 set bits.
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"
    if content_type in ("audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg-3") and head:
        return "mp3"
    return None

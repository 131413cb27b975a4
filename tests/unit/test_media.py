"""Media layer: voice resolution, espeak-ng TTS, downloads and the WAV store.

These run the real espeak-ng, sox and ffmpeg, and download from a real aiohttp
server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import socket
import subprocess
import time
import wave
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from bridge.media import (
    DEFAULT_VOICE,
    EspeakTts,
    MediaError,
    MediaStore,
    TtsProvider,
    Voice,
    espeak_voice,
    level_to_gain_db,
    resolve_voice,
)
from bridge.media.voices import VOICE_NAMES, espeak_voice_ids


@pytest.fixture(autouse=True)
def _needs_media_tools() -> None:
    # ./run test installs them; a missing tool fails loudly instead of skipping.
    missing = [t for t in ("espeak-ng", "sox", "ffmpeg") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"needs {', '.join(missing)} (apt-get install espeak-ng sox ffmpeg)")

EN_US_F = Voice("en-US", "female", 0)
SHORT = "Hello."
LONG = (
    "Thank you for calling. Your call is important to us, and an agent will be with "
    "you shortly. Please stay on the line."
)


# --- helpers ------------------------------------------------------------------


@dataclass
class Pcm:
    rate_hz: int
    channels: int
    width: int
    samples: array[int]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.channels / self.rate_hz

    @property
    def rms(self) -> float:
        if not self.samples:
            return 0.0
        return math.sqrt(sum(s * s for s in self.samples) / len(self.samples))

    @property
    def peak(self) -> int:
        return max(abs(s) for s in self.samples)


def read_pcm(path: Path) -> Pcm:
    with wave.open(str(path), "rb") as w:
        assert w.getcomptype() == "NONE"
        raw = w.readframes(w.getnframes())
        pcm = Pcm(w.getframerate(), w.getnchannels(), w.getsampwidth(), array("h"))
    pcm.samples.frombytes(raw)
    return pcm


def assert_telephony(path: Path) -> Pcm:
    pcm = read_pcm(path)
    assert (pcm.rate_hz, pcm.channels, pcm.width) == (8000, 1, 2)
    return pcm


class CountingTts:
    """Wraps a provider and counts syntheses; can hold them at a gate."""

    def __init__(self, inner: TtsProvider, gate: asyncio.Event | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0
        self.started = asyncio.Event()
        self.cancelled = False
        self.gate = gate

    async def synthesize(self, text: str, voice: Voice, out_wav: Path) -> None:
        self.calls += 1
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await self.inner.synthesize(text, voice, out_wav)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


async def wait_until(predicate: object, timeout_s: float = 5.0) -> None:
    """Poll ``predicate()`` until true or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1 s, 440 Hz tone at -6 dBFS as 44.1 kHz stereo WAV and as mp3."""
    d = tmp_path_factory.mktemp("audio")
    wav = d / "tone.wav"
    mp3 = d / "tone.mp3"
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(wav), "synth", "1", "sine", "440",
         "gain", "-6"],
        check=True,
    )  # fmt: skip
    subprocess.run(["sox", str(wav), str(mp3)], check=True)
    return {"wav": wav, "mp3": mp3}


@dataclass
class Server:
    base: str
    hits: Counter[str]
    release: asyncio.Event

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture(scope="module")
async def server(audio_files: dict[str, Path]) -> AsyncIterator[Server]:
    hits: Counter[str] = Counter()
    release = asyncio.Event()
    big = b"\0" * 256 * 1024

    async def count(request: web.Request) -> None:
        hits[request.path] += 1

    async def tone_mp3(request: web.Request) -> web.StreamResponse:
        await count(request)
        return web.Response(body=audio_files["mp3"].read_bytes(), content_type="audio/mpeg")

    async def tone_wav(request: web.Request) -> web.StreamResponse:
        await count(request)
        # Deliberately generic type: the store must look at the bytes.
        return web.Response(
            body=audio_files["wav"].read_bytes(), content_type="application/octet-stream"
        )

    async def missing(request: web.Request) -> web.StreamResponse:
        await count(request)
        return web.Response(status=404, text="nope")

    async def html(request: web.Request) -> web.StreamResponse:
        await count(request)
        return web.Response(text="<html><body>not audio</body></html>", content_type="text/html")

    async def fake_mp3(request: web.Request) -> web.StreamResponse:
        await count(request)
        return web.Response(text="this is plain text, not mpeg audio\n" * 20,
                            content_type="audio/mpeg")  # fmt: skip

    async def chunked_big(request: web.Request) -> web.StreamResponse:
        await count(request)
        resp = web.StreamResponse()  # no Content-Length: chunked encoding
        resp.content_type = "audio/mpeg"
        await resp.prepare(request)
        for _ in range(8):
            await resp.write(big)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.StreamResponse:
        await count(request)
        await release.wait()
        return web.Response(status=200, body=b"late")

    app = web.Application()
    app.router.add_get("/tone.mp3", tone_mp3)
    app.router.add_get("/tone.wav", tone_wav)
    app.router.add_get("/missing.mp3", missing)
    app.router.add_get("/page.html", html)
    app.router.add_get("/fake.mp3", fake_mp3)
    app.router.add_get("/big.mp3", chunked_big)
    app.router.add_get("/slow.mp3", slow)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(f"http://127.0.0.1:{port}", hits, release)
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MediaStore]:
    async with MediaStore(tmp_path / "media", EspeakTts(), fetch_timeout_s=0.5) as s:
        yield s


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port with nothing listening (connect is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    yield port


# --- voices -------------------------------------------------------------------


def test_voice_name_resolves_language_and_gender() -> None:
    assert resolve_voice("Amy", None, None) == Voice("en-GB", "female", 0)
    assert resolve_voice("aMY", None, None) == Voice("en-GB", "female", 0)
    assert resolve_voice("Hans", None, 2) == Voice("de-DE", "male", 2)
    assert resolve_voice("Geraint", None, None).language == "en-GB-WLS"


def test_default_voice_is_kimberly() -> None:
    assert resolve_voice(None, None, None) == DEFAULT_VOICE == Voice("en-US", "female", 0)
    assert VOICE_NAMES["kimberly"] == ("en-US", "female")
    assert len(VOICE_NAMES) == 49


def test_language_wins_over_voice_name() -> None:
    assert resolve_voice("Amy", "de-DE", 1) == Voice("de-DE", None, 1)
    # Even an unknown voiceName is ignored once language is present.
    assert resolve_voice("Bob", "en-gb", None) == Voice("en-GB", None, 0)
    assert resolve_voice(None, "EN-gb-wls", None).language == "en-GB-WLS"


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        (("Bob", None, None), "voiceName", "'Bob'"),
        ((None, "english", None), "language", "'english'"),
        ((None, "en_GB", None), "language", "'en_GB'"),
        ((None, "", None), "language", "''"),
        ((None, "en-GB", -1), "style", "-1"),
    ],
)
def test_bad_voice_fields_name_field_and_value(
    args: tuple[str | None, str | None, int | None], field: str, value: str
) -> None:
    with pytest.raises(ValueError) as err:
        resolve_voice(*args)
    assert field in str(err.value)
    assert value in str(err.value)


def test_espeak_mapping_and_fallbacks() -> None:
    amy = espeak_voice(resolve_voice("Amy", None, None))
    assert (amy.arg, amy.fallback) == ("en-gb+f3", None)
    assert espeak_voice(resolve_voice("Brian", None, None)).arg == "en-gb+m3"
    assert espeak_voice(resolve_voice("Miguel", None, None)).arg == "es-419+m3"
    # No Australian voice in espeak-ng: closest variety, and it is recorded.
    nicole = espeak_voice(resolve_voice("Nicole", None, None))
    assert nicole.voice == "en-gb" and nicole.fallback and "en-AU" in nicole.fallback
    # Unknown region -> base language; unknown language -> en-us; both recorded.
    de_lu = espeak_voice(Voice("de-LU", None, 0))
    assert de_lu.voice == "de" and de_lu.fallback
    xx = espeak_voice(Voice("xx-YY", None, 0))
    assert xx.voice == "en-us" and xx.fallback
    assert espeak_voice(Voice("de", None, 0)).fallback is None


def test_style_selects_variants() -> None:
    female = {espeak_voice(Voice("en-US", "female", s)).variant for s in range(5)}
    assert female == {"f1", "f2", "f3", "f4", "f5"}
    male = {espeak_voice(Voice("en-US", "male", s)).variant for s in range(7)}
    assert male == {f"m{i}" for i in range(1, 8)}
    assert espeak_voice(Voice("en-US", None, 0)).variant == "f3"
    assert espeak_voice(Voice("en-US", None, 1)).variant == "m3"
    # Large styles wrap rather than fail.
    assert espeak_voice(Voice("en-US", "female", 1000)).variant.startswith("f")


def test_mapped_espeak_voices_are_installed() -> None:
    listing = subprocess.run(
        ["espeak-ng", "--voices"], check=True, capture_output=True, text=True
    ).stdout
    available: set[str] = set()
    for line in listing.splitlines()[1:]:
        available.add(line.split()[1])
        # "Other Languages" column, e.g. "(en 2)(en-gb 3)"
        available.update(re.findall(r"\(([\w-]+) \d+\)", line))
    assert espeak_voice_ids() <= available, espeak_voice_ids() - available


# --- TTS ----------------------------------------------------------------------


async def test_tts_writes_telephony_wav_proportional_to_text(store: MediaStore) -> None:
    short = await store.tts(SHORT, EN_US_F)
    long = await store.tts(LONG, EN_US_F)
    short_pcm = assert_telephony(short.path)
    long_pcm = assert_telephony(long.path)
    assert short.duration_s == pytest.approx(short_pcm.duration_s)
    assert 0.2 < short.duration_s < 2.0
    assert long.duration_s > 3 * short.duration_s
    assert short_pcm.rms > 300 and long_pcm.rms > 300  # speech, not silence
    assert short.media_id != long.media_id
    assert store.path_for(long.media_id) == long.path


async def test_tts_other_languages_and_voices(store: MediaStore) -> None:
    de = await store.tts("Guten Tag, wie geht es Ihnen?", resolve_voice("Hans", None, None))
    assert assert_telephony(de.path).rms > 300
    # Unknown language still speaks (en-us fallback) rather than failing the call.
    xx = await store.tts("Hello there.", Voice("xx-YY", None, 3))
    assert xx.duration_s > 0.3


async def test_tts_ssml_and_hostile_text(store: MediaStore) -> None:
    ssml = await store.tts('<speak>One <break time="1s"/> two</speak>', EN_US_F)
    plain = await store.tts("One two", EN_US_F)
    assert ssml.duration_s > plain.duration_s + 0.5
    # Looks like options and shell syntax; must simply be read out.
    odd = await store.tts("-v xx --help; $(rm -rf /) `id` \x00\x07 done", EN_US_F)
    assert odd.duration_s > 1.0


async def test_tts_rejects_too_long_text(store: MediaStore) -> None:
    with pytest.raises(MediaError) as err:
        await store.tts("a" * 1501, EN_US_F)
    assert err.value.cause == "text too long"
    ok = await store.tts(("word " * 300)[:1500], EN_US_F)
    assert ok.duration_s > 10


async def test_tts_cache_skips_provider(tmp_path: Path) -> None:
    tts = CountingTts(EspeakTts())
    async with MediaStore(tmp_path, tts) as store:
        first = await store.tts(SHORT, EN_US_F)
        second = await store.tts(SHORT, EN_US_F)
        assert tts.calls == 1
        assert second == first
        # Any input change is a different item.
        await store.tts(SHORT, Voice("en-US", "female", 1))
        await store.tts(SHORT, EN_US_F, level=-0.5)
        assert tts.calls == 3
        # Levels are compared at Vonage's 0.1 precision.
        await store.tts(SHORT, EN_US_F, level=-0.04)
        await store.tts(SHORT, EN_US_F, level=-0.51)
        assert tts.calls == 3
    # A new store over the same directory reuses the files.
    tts2 = CountingTts(EspeakTts())
    async with MediaStore(tmp_path, tts2) as store2:
        again = await store2.tts(SHORT, EN_US_F)
    assert again == first and tts2.calls == 0
    # Only finished files are left in the directory, no scratch files.
    names = listdir(tmp_path)
    assert len(names) == 3 and all(n.endswith(".wav") and not n.startswith(".") for n in names)


async def test_a_cached_file_deleted_behind_the_store_s_back_is_made_again(
        tmp_path: Path) -> None:
    tts = CountingTts(EspeakTts())
    async with MediaStore(tmp_path, tts) as store:
        first = await store.tts(SHORT, EN_US_F)
        assert (await store.tts(SHORT, EN_US_F)) == first and tts.calls == 1
        first.path.unlink()  # an operator pruning the cache
        again = await store.tts(SHORT, EN_US_F)
        assert tts.calls == 2
        assert again == first and again.path.is_file()


async def test_tts_concurrent_identical_requests_synthesize_once(tmp_path: Path) -> None:
    tts = CountingTts(EspeakTts())
    async with MediaStore(tmp_path, tts) as store:
        items = await asyncio.gather(*(store.tts(LONG, EN_US_F) for _ in range(5)))
    assert tts.calls == 1
    assert len(set(items)) == 1


async def test_cancelled_waiter_does_not_cancel_the_others(tmp_path: Path) -> None:
    gate = asyncio.Event()
    tts = CountingTts(EspeakTts(), gate)
    async with MediaStore(tmp_path, tts) as store:
        a = asyncio.create_task(store.tts(SHORT, EN_US_F))
        b = asyncio.create_task(store.tts(SHORT, EN_US_F))
        await asyncio.wait_for(tts.started.wait(), 5)
        a.cancel()
        gate.set()
        item = await asyncio.wait_for(b, 10)
        assert a.cancelled()
        assert item.duration_s > 0 and tts.calls == 1 and not tts.cancelled


async def test_work_is_cancelled_when_every_waiter_leaves(tmp_path: Path) -> None:
    tts = CountingTts(EspeakTts(), asyncio.Event())
    async with MediaStore(tmp_path, tts) as store:
        a = asyncio.create_task(store.tts(SHORT, EN_US_F))
        await asyncio.wait_for(tts.started.wait(), 5)
        a.cancel()
        await wait_until(lambda: tts.cancelled)
        assert not [n for n in listdir(tmp_path) if n.endswith(".wav")]


async def test_tts_level_changes_loudness(store: MediaStore) -> None:
    base = assert_telephony((await store.tts(LONG, EN_US_F)).path)
    quiet = assert_telephony((await store.tts(LONG, EN_US_F, level=-1)).path)
    loud = assert_telephony((await store.tts(LONG, EN_US_F, level=1)).path)
    assert quiet.rms < base.rms * 0.5
    assert loud.rms > base.rms * 1.5
    assert loud.peak < 32767  # limiter, not clipping


def test_level_mapping() -> None:
    assert level_to_gain_db(0) == 0
    assert level_to_gain_db(-1) == -10
    assert level_to_gain_db(0.5) == 5
    assert level_to_gain_db(0.33) == 3.0
    assert level_to_gain_db(-0.04) == 0.0
    for bad in (1.5, -1.01, float("nan")):
        with pytest.raises(ValueError, match="level"):
            level_to_gain_db(bad)


# --- downloads ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tone.mp3", "tone.wav"])
async def test_fetch_transcodes_to_telephony(store: MediaStore, server: Server, name: str) -> None:
    item = await store.fetch(server.url(f"/{name}"))
    pcm = assert_telephony(item.path)
    assert item.duration_s == pytest.approx(1.0, abs=0.1)
    assert pcm.rms > 3000  # a -6 dBFS sine has RMS ~11600
    assert store.path_for(item.media_id) == item.path


async def test_fetch_is_cached_and_single_flight(store: MediaStore, server: Server) -> None:
    url = server.url("/tone.mp3") + "?single-flight"
    before = server.hits["/tone.mp3"]
    items = await asyncio.gather(*(store.fetch(url) for _ in range(5)))
    again = await store.fetch(url)
    assert server.hits["/tone.mp3"] == before + 1
    assert len({*items, again}) == 1


async def test_fetch_level_lowers_and_raises_rms(store: MediaStore, server: Server) -> None:
    url = server.url("/tone.wav")
    base = assert_telephony((await store.fetch(url)).path)
    quiet = assert_telephony((await store.fetch(url, level=-1)).path)
    loud = assert_telephony((await store.fetch(url, level=1)).path)
    # -10 dB is x0.316 in amplitude.
    assert quiet.rms == pytest.approx(base.rms * 0.316, rel=0.1)
    assert loud.rms > base.rms
    assert loud.peak < 32767


async def test_fetch_http_error(store: MediaStore, server: Server) -> None:
    url = server.url("/missing.mp3")
    with pytest.raises(MediaError) as err:
        await store.fetch(url)
    assert err.value.cause == "http 404"
    assert url in str(err.value) and err.value.url == url


async def test_fetch_unreachable(store: MediaStore, closed_port: int) -> None:
    with pytest.raises(MediaError) as err:
        await store.fetch(f"http://127.0.0.1:{closed_port}/x.mp3")
    assert err.value.cause == "unreachable"


@pytest.mark.parametrize("path", ["/page.html", "/fake.mp3"])
async def test_fetch_not_audio(store: MediaStore, server: Server, path: str) -> None:
    with pytest.raises(MediaError) as err:
        await store.fetch(server.url(path))
    assert err.value.cause == "not audio"
    assert server.url(path) in str(err.value)


@pytest.mark.parametrize("path", ["/tone.wav", "/big.mp3"])
async def test_fetch_too_large(tmp_path: Path, server: Server, path: str) -> None:
    # /tone.wav announces Content-Length; /big.mp3 is chunked and only the
    # running count can stop it.
    async with MediaStore(tmp_path, EspeakTts(), max_download_bytes=100_000) as store:
        with pytest.raises(MediaError) as err:
            await store.fetch(server.url(path))
    assert err.value.cause == "too large"


async def test_fetch_timeout_shared_by_concurrent_callers(tmp_path: Path, server: Server) -> None:
    async with MediaStore(tmp_path, EspeakTts(), fetch_timeout_s=0.3) as store:
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.fetch(server.url("/slow.mp3")) for _ in range(3)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    assert all(isinstance(r, MediaError) and r.cause == "timeout" for r in results)
    assert server.hits["/slow.mp3"] == 1
    assert elapsed < 2.0  # one timeout, not three in a row


@pytest.mark.parametrize("url", ["ftp://example.invalid/a.mp3", "file:///etc/passwd", "nonsense"])
async def test_fetch_rejects_non_http_urls(store: MediaStore, url: str) -> None:
    with pytest.raises(MediaError) as err:
        await store.fetch(url)
    assert err.value.cause == "bad url"


# --- path_for -----------------------------------------------------------------


async def test_path_for_accepts_only_media_ids(store: MediaStore) -> None:
    item = await store.tts(SHORT, EN_US_F)
    assert store.path_for(item.media_id) == item.path
    assert item.path.parent == store.root
    (store.root.parent / "x").write_text("secret")
    for bad in (
        "../x",
        "../" + item.media_id,
        item.media_id.upper(),
        item.media_id[:-1],
        item.media_id + "0",
        item.media_id + ".wav",
        "",
        "/" + item.media_id,
    ):
        assert store.path_for(bad) is None, bad
    assert store.path_for("0" * 64) is None  # well-formed but absent


async def test_newcomer_after_abandonment_gets_fresh_work(tmp_path: Path) -> None:
    gate = asyncio.Event()
    tts = CountingTts(EspeakTts(), gate)
    async with MediaStore(tmp_path, tts) as store:
        a = asyncio.create_task(store.tts(SHORT, EN_US_F))
        await asyncio.wait_for(tts.started.wait(), 5)
        a.cancel()
        # Joins while the abandoned production is still unwinding.
        b = asyncio.create_task(store.tts(SHORT, EN_US_F))
        gate.set()
        item = await asyncio.wait_for(b, 10)
    assert item.duration_s > 0 and tts.calls == 2

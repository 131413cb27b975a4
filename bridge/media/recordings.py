"""Recordings: made on Asterisk, fetched over ARI, mixed and converted here, kept in the
FileStore that the REST API serves at ``/v1/files/<id>``.

There is no shared filesystem with Asterisk. Each side of a call is recorded on Asterisk as a
WAV (a snoop channel per direction, or a bridge's mix), fetched with
``GET /recordings/stored/{name}/file`` and deleted there. sox then mixes the sides to mono or
merges them as channels (``split: conversation``: channel 1 the caller, channel 2 the other
party) and writes the requested format (wav, mp3, ogg).

Finishing a recording (stop, fetch, convert, send the ``record`` event) runs as a task owned by
this service, not by the call: a recording that ends because the caller hung up is still
delivered, and the call's ``completed`` event is not held back by the conversion. The stored
file stays until it is deleted or ``recordings.retention_hours`` pass, whether or not the event
webhook took the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from bridge.ari.errors import AriError
from bridge.media.audio import run_tool
from bridge.media.errors import MediaError
from bridge.media.files import FileStore

if TYPE_CHECKING:
    from bridge.ari.gateway import AriGateway

log = structlog.get_logger(__name__)

Layout = Literal["mono", "split"]
FORMATS = ("wav", "mp3", "ogg")
_UUID_STEM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Seconds sox may take to mix and encode one recording.
CONVERT_TIMEOUT_S = 120.0


@dataclass
class StoredRecording:
    file_id: str
    path: Path
    size: int
    duration_s: float


@dataclass
class RecordingService:
    """Turns Asterisk recordings into stored files; owns the tasks that finish them."""

    gateway: AriGateway
    files: FileStore
    retention_hours: float = 720.0
    sweep_interval_s: float = 3600.0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _sweeper: asyncio.Task[None] | None = None

    # -------------------------------------------------------------------- tasks
    def run_detached(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` apart from any call: finishing a recording outlives the call."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="recordings-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # Recordings being finished get a bounded chance to land in the store.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        for task in list(self._tasks):
            task.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            self.sweep()

    def sweep(self, now: float | None = None) -> int:
        """Delete stored files older than the retention; returns how many ids went."""
        root = self.files.root
        if not root.is_dir():
            return 0
        limit = (now if now is not None else time.time()) - self.retention_hours * 3600
        removed = 0
        for path in root.iterdir():
            stem = path.name.split(".", 1)[0]
            if not _UUID_STEM.match(stem) or self.files.path_for(stem) != path.resolve():
                continue
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < limit:
                    for sibling in root.glob(f"{stem}.*"):
                        sibling.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("recordings.expired", files=removed, retention_hours=self.retention_hours)
        return removed

    # --------------------------------------------------------------- recordings
    async def fetch(self, names: list[str], folder: Path) -> list[Path]:
        """Download Asterisk's stored WAVs and delete them there. A side that was never
        written (the call ended at once) is skipped."""
        out: list[Path] = []
        for name in names:
            try:
                body = await self.gateway.stored_recording_file(name)
            except AriError as exc:
                log.warning("recordings.fetch_failed", name=name, error=str(exc))
                continue
            path = folder / f"{name}.wav"
            # A recording is megabytes: the disk write must not hold up every other call.
            await asyncio.to_thread(path.write_bytes, body)
            out.append(path)
            with contextlib.suppress(AriError):
                await self.gateway.delete_stored_recording(name)
        return out

    async def store(self, names: list[str], layout: Layout, fmt: str, channels: int,
                    application_id: str | None) -> StoredRecording:
        """Fetch ``names`` (caller side first), combine, convert and add to the FileStore."""
        with tempfile.TemporaryDirectory(prefix="ari-bridge-rec-") as tmp:
            folder = Path(tmp)
            sides = await self.fetch(names, folder)
            if not sides:
                raise MediaError("no recording", "Asterisk stored no audio for this recording")
            target = folder / f"recording.{fmt}"
            await combine(sides, target, layout, channels)
            duration = await probe_duration(target)
            size = target.stat().st_size
            file_id = await asyncio.to_thread(self.files.add, target, application_id)
        path = self.files.path_for(file_id)
        assert path is not None
        return StoredRecording(file_id, path, size, duration)


async def combine(sides: list[Path], target: Path, layout: Layout, channels: int = 2) -> None:
    """Mix ``sides`` to mono, or merge them as channels (side 1 -> channel 1, ...), padded to
    ``channels`` with silent channels, and encode by ``target``'s suffix (wav/mp3/ogg)."""
    fmt = target.suffix.lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unsupported recording format {fmt!r}")
    argv: list[str | Path] = ["sox", "-q", "-V1"]
    effects: list[str] = []
    if len(sides) == 1:
        argv.append(sides[0])
        if layout == "split":
            effects = ["remix", "1", *(["0"] * (max(channels, 2) - 1))]
    elif layout == "mono":
        argv.append("-m")
        for side in sides:
            argv += ["-v", "1", side]  # no 1/n scaling: each party keeps its level
    else:
        argv.append("-M")
        argv += sides
        total = max(channels, len(sides))
        effects = ["remix", *[str(i + 1) for i in range(len(sides))],
                   *(["0"] * (total - len(sides)))]
    encoding = ["-e", "signed-integer", "-b", "16"] if fmt == "wav" else []
    argv += ["-r", "8000", *encoding, target, *effects]
    await run_tool(argv, timeout_s=CONVERT_TIMEOUT_S, failure_cause="transcode failed",
                   subject="recording")


async def probe_duration(path: Path) -> float:
    """Seconds of audio in ``path`` (soxi)."""
    proc = await asyncio.create_subprocess_exec(
        "soxi", "-D", str(path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    try:
        return float(out.decode().strip())
    except ValueError:
        return 0.0


__all__ = ["RecordingService", "StoredRecording", "combine", "probe_duration"]

"""Recordings (and any other file the API hands out) under one directory, by opaque id.

``add(path)`` moves a finished file into the store and returns its id, a random UUID; the
file is then ``<root>/<id><suffix>``. ``path_for(id)`` accepts only that UUID form and only
files directly inside the root, so no id can reach outside the store. ``url(base, id)`` is
what a ``record`` event's ``recording_url`` carries: ``<base>/v1/files/<id>``, fetched with the
same application JWT as the rest of the API.

An optional owner (application id) is kept beside the file as ``<id>.owner``; a file with an
owner is only served to that application.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OWNER = ".owner"

CONTENT_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
}


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, path: Path, application_id: str | None = None) -> str:
        """Move ``path`` into the store; returns its new id."""
        self.root.mkdir(parents=True, exist_ok=True)
        file_id = str(uuid.uuid4())
        suffix = path.suffix.lower() if path.suffix.lower() in CONTENT_TYPES else ".bin"
        target = self.root / f"{file_id}{suffix}"
        shutil.move(str(path), target)
        if application_id is not None:
            (self.root / f"{file_id}{_OWNER}").write_text(application_id)
        return file_id

    def path_for(self, file_id: str, application_id: str | None = None) -> Path | None:
        """The file for ``file_id``, or None (unknown, malformed, or another owner's)."""
        if not _ID.match(file_id) or not self.root.is_dir():
            return None
        root = self.root.resolve()
        owner_file = self.root / f"{file_id}{_OWNER}"
        if (application_id is not None and owner_file.is_file()
                and owner_file.read_text().strip() != application_id):
            return None
        for suffix in (*CONTENT_TYPES, ".bin"):
            candidate = self.root / f"{file_id}{suffix}"
            if candidate.is_file() and not candidate.is_symlink():
                resolved = candidate.resolve()
                if resolved.parent == root:
                    return resolved
        return None

    @staticmethod
    def content_type(path: Path) -> str:
        return CONTENT_TYPES.get(path.suffix, "application/octet-stream")

    @staticmethod
    def url(base_url: str, file_id: str) -> str:
        return f"{base_url.rstrip('/')}/v1/files/{file_id}"

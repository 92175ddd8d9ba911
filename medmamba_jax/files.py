"""Writing files so that a reader, or a run killed midway, never sees half of one; reading JSON lines.

Every layer may import this module: it imports nothing of medmamba_jax.

Permissions: the files come out as ``open()`` makes them (0666 less the umask, usually 0644),
not owner-only as ``tempfile.mkstemp`` would leave them. Nothing written through here is
secret (configs, metrics, figures, model configs, downloaded public datasets), and a
workdir or data directory shared by a group must stay readable by it, like the Orbax
checkpoints and logs written beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yields the name of a new empty file beside ``path`` for the caller to write; when the block
    ends normally, the file is flushed to disk (fsync) and renamed over ``path``.

    Readers see the old ``path`` or the complete new one. On any exception, a KeyboardInterrupt
    included, the temporary file is removed and ``path`` is left as it was. The temporary name
    ends in ``suffix``: a writer that picks the format by it (matplotlib) passes e.g. ".tmp.png".
    """
    path = os.fspath(path)
    tmp = _new_file_beside(path, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_file_beside(path: str, suffix: str) -> str:
    """Creates an empty file named ``path``.RANDOM``suffix``; returns its name."""
    while True:
        tmp = f"{path}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented JSON with sorted keys atomically: readers see the old file or
    the complete new one, and an unserialisable value leaves the old file in place."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_json_lines(path: str | os.PathLike, records: list[dict]) -> None:
    """Replaces ``path`` atomically with one JSON object per line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file; a line that a killed writer left half-written is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records

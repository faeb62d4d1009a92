"""The journal: what `mptun up` created, on disk before it is created, so undo is exact.

One JSON file per TUN (/run/mptun/<tun>.json, or a directory given for tests),
rewritten atomically and fsync'd on every change. Its existence means "mptun is up
(or died) here": creation is exclusive, so a second `up` is refused. An empty file is
a journal whose creator died before writing its header: it lists nothing to undo.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from mptun.netcfg.errors import NetcfgError

JOURNAL_DIR = "/run/mptun"
VERSION = 1


def journal_path(tun_name: str, directory: str | None = None) -> str:
    return os.path.join(directory or JOURNAL_DIR, f"{tun_name}.json")


def _write_all(fd: int, data: bytes) -> None:
    """All of data to fd, then fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Journal:
    path: str
    header: dict
    entries: list[dict] = field(default_factory=list)

    @classmethod
    def create(cls, path: str, header: dict) -> Journal:
        """A new journal with no entries, on disk when this returns; FileExistsError if one is there."""
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        j = cls(path, {"version": VERSION, **header})
        data = j._encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # The header goes through the exclusive fd, not a later rewrite: dying before it is
        # written leaves an empty file, which load() reads as a journal with no entries.
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)   # ours, just created and empty or partial: up can be run again
            raise
        _fsync_dir(path)
        return j

    @classmethod
    def load(cls, path: str) -> Journal:
        with open(path, "rb") as f:
            raw = f.read()
        if not raw:
            # Its creator died between creating it and writing the header: nothing was done yet.
            return cls(path, {"version": VERSION}, [])
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise NetcfgError(f"the journal {path} is damaged ({why}); remove what it lists by hand") from None
        if not isinstance(data, dict):
            raise NetcfgError(f"the journal {path} is damaged (not a JSON object); remove what it lists by hand")
        if data.get("version") != VERSION:
            raise NetcfgError(f"the journal {path} has version {data.get('version')}, not {VERSION}")
        entries = data.pop("entries", [])
        return cls(path, data, entries)

    def append(self, op_json: dict, **extra) -> None:
        self.entries.append({"op": op_json, "extra": extra})
        self._write()

    def update_last(self, **extra) -> None:
        self.entries[-1]["extra"].update(extra)
        self._write()

    def drop_last(self) -> None:
        self.entries.pop()
        self._write()

    def set_entries(self, entries: list[dict]) -> None:
        self.entries = entries
        self._write()

    def find(self, op_json: dict) -> dict | None:
        """The latest entry of this operation (live.py adds and removes path state while up)."""
        return next((e for e in reversed(self.entries) if e["op"] == op_json), None)

    def discard(self, op_jsons: list[dict]) -> None:
        """Drop the latest entry of each of these operations (they were undone), in one write."""
        entries = list(self.entries)
        for op in op_jsons:
            for k in range(len(entries) - 1, -1, -1):
                if entries[k]["op"] == op:
                    del entries[k]
                    break
        self.set_entries(entries)

    def remove(self) -> None:
        # A .tmp is what a process killed inside _write() left: the journal itself is whole.
        removed = False
        for p in (self.path + ".tmp", self.path):
            try:
                os.unlink(p)
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            _fsync_dir(self.path)

    def _encode(self) -> bytes:
        return json.dumps({**self.header, "entries": self.entries}, indent=1).encode()

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        data = self._encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path)

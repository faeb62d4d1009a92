"""The journal: what `mptun up` created, on disk before it is created, so undo is exact.

One JSON file per TUN (/run/mptun/<tun>.json, or a directory given for tests),
rewritten atomically and fsync'd on every change. Its existence means "mptun is up
(or died) here": creation is exclusive, so a second `up` is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from mptun.netcfg.errors import NetcfgError

JOURNAL_DIR = "/run/mptun"
VERSION = 1


def journal_path(tun_name: str, directory: str | None = None) -> str:
    return os.path.join(directory or JOURNAL_DIR, f"{tun_name}.json")


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
        """A new, empty journal; FileExistsError if one is there."""
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        j = cls(path, {"version": VERSION, **header})
        j._write()
        return j

    @classmethod
    def load(cls, path: str) -> Journal:
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise NetcfgError(f"the journal {path} is damaged ({e.msg}); remove what it lists by hand") from None
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

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        _fsync_dir(self.path)

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        data = json.dumps({**self.header, "entries": self.entries}, indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path)

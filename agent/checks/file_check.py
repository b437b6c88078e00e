"""`file`: a file exists and, with `max_age`, was modified recently (a heartbeat file)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Duration, Field, Str, optional
from agent.units import format_duration


@dataclass(frozen=True)
class Params:
    path: str
    max_age: float | None = None


# Filesystems whose stat answers from local memory or a local disk; any other (nfs, cifs, fuse, ceph...) may hang.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs", "overlay", "squashfs",
                               "devtmpfs", "proc", "sysfs", "vfat", "iso9660"})
RECHECK_MOUNT = 60.0  # how often to look again where the path lives (a symlink may come to point elsewhere)


class FileCheck:
    def __init__(self, params: Params) -> None:
        self.params = params
        self._local_until = 0.0  # monotonic time until which the path is known to be on a local filesystem

    async def run(self) -> str:
        try:
            if self._local_until > time.monotonic():
                st = os.stat(self.params.path)  # local: as quick as a thread hop's own bookkeeping
            else:
                # A thread, because a stat on a network filesystem can hang; meanwhile look where the path lives.
                st, local = await asyncio.to_thread(_stat_and_place, self.params.path)
                self._local_until = time.monotonic() + RECHECK_MOUNT if local else 0.0
        except FileNotFoundError:
            self._local_until = 0.0
            raise CheckFailure(f"{self.params.path} does not exist") from None
        except OSError as exc:
            self._local_until = 0.0
            raise CheckFailure(f"cannot stat {self.params.path}: {exc.strerror or exc}") from None
        age = max(0.0, time.time() - st.st_mtime)  # file times are wall-clock by nature
        if self.params.max_age is not None and age > self.params.max_age:
            raise CheckFailure(f"{self.params.path} was last modified {format_duration(round(age, 1))} ago, "
                               f"over max_age {format_duration(self.params.max_age)}")
        return f"{self.params.path} exists, modified {format_duration(round(age, 1))} ago"

    async def close(self) -> None:
        return None


def _stat_and_place(path: str) -> tuple[os.stat_result, bool]:
    """The path's stat, and whether it (symlinks followed) lives on a local filesystem."""
    st = os.stat(path)
    return st, _filesystem(os.path.realpath(path)) in LOCAL_FILESYSTEMS


def _filesystem(path: str) -> str:
    """The type of the filesystem mounted deepest above `path`, from /proc/self/mountinfo ("" when unknown)."""
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if "-" not in fields:
                    continue
                mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                under = path == mount or path.startswith(mount.rstrip("/") + "/")
                if under and len(mount) >= len(best):  # a later mount on the same point hides the earlier
                    best, kind = mount, fields[fields.index("-") + 1]
    except OSError:
        return ""
    return kind


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> FileCheck:
    return FileCheck(spec.params)


TYPE = CheckType(
    name="file",
    fields=(Field("path", Str(), doc="the file that must exist"),
            optional("max_age", Duration(positive=True), "fail when the file is older than this")),
    params=Params,
    create=_create,
)

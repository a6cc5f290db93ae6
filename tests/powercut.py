"""A filesystem that loses, on a power cut, every byte that was not fsynced.

A passthrough FUSE filesystem over a backing directory (mfusepy on libfuse3). File data written
through it stays in this process's memory until the writer fsyncs that file; only then does it
reach the backing directory. Killing this process (SIGKILL) is the power cut: the unsynced data
is gone, exactly what a real power loss does to a page cache, and what a SIGKILL of the writer
alone cannot show. Directory changes (create, rename, unlink, mkdir) reach the backing
directory at once: the model is harsh on data, which is what the "at most 2 s lost" promise is
about, and kind on metadata.

    python -m tests.powercut BACKING MOUNTPOINT     (foreground; SIGKILL it to cut the power)

A failing card, too: while a file named `EIO_SWITCH` exists at the top of the mount, every write
and fsync fails with EIO (create it to break the card, remove it to mend it).

`PowerCut` starts and cuts it from a test.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EIO_SWITCH = ".powercut-eio"
_STAT_KEYS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
              "st_uid", "st_ino")


def _operations() -> Any:
    import mfusepy as fuse

    class Volatile(fuse.Operations):
        """Passthrough with a volatile write cache: `_dirty[path]` holds unsynced writes."""

        use_ns = True

        def __init__(self, root: str) -> None:
            self.root = root
            self._dirty: dict[str, tuple[list[tuple[int, bytes]], int]] = {}
            self.eio = False

        def _p(self, path: str) -> str:
            return self.root + path

        def _oserror(self, exc: OSError) -> Exception:
            return fuse.FuseOSError(exc.errno or errno.EIO)

        # -- metadata (applied at once) --
        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            try:
                st = os.lstat(self._p(path))
            except OSError as exc:
                raise self._oserror(exc) from None
            attrs = {k: getattr(st, k) for k in _STAT_KEYS}
            for key in ("st_atime", "st_ctime", "st_mtime"):
                attrs[key] = getattr(st, key + "_ns") if hasattr(st, key + "_ns") else attrs[key]
            if path in self._dirty:
                attrs["st_size"] = self._dirty[path][1]
            return attrs

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", *os.listdir(self._p(path))]

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(self._p(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._p(path))

        def unlink(self, path: str) -> None:
            os.unlink(self._p(path))
            self._dirty.pop(path, None)
            if path == "/" + EIO_SWITCH:
                self.eio = False

        def rename(self, old: str, new: str) -> None:
            os.replace(self._p(old), self._p(new))
            self._dirty.pop(new, None)
            if old in self._dirty:
                self._dirty[new] = self._dirty.pop(old)

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._p(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.chown(self._p(path), uid, gid)

        def utimens(self, path: str, times: Any = None) -> None:
            os.utime(self._p(path), ns=times) if times else os.utime(self._p(path))

        def statfs(self, path: str) -> dict[str, Any]:
            st = os.statvfs(self._p(path))
            return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                                 "f_favail", "f_ffree", "f_files", "f_flag",
                                                 "f_frsize", "f_namemax")}

        def access(self, path: str, amode: int) -> None:
            if not os.access(self._p(path), amode):
                raise fuse.FuseOSError(errno.EACCES)

        # -- data (volatile until fsync) --
        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fd = os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            os.close(fd)
            self._dirty.pop(path, None)
            if path == "/" + EIO_SWITCH:
                self.eio = True
            return 0

        def open(self, path: str, flags: int) -> int:
            if flags & os.O_TRUNC:
                self.truncate(path, 0)
            return 0

        def _size(self, path: str) -> int:
            if path in self._dirty:
                return self._dirty[path][1]
            return os.lstat(self._p(path)).st_size

        def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
            with open(self._p(path), "rb") as f:
                f.seek(offset)
                data = bytearray(f.read(size))
            end = min(offset + size, self._size(path))
            data.extend(b"\0" * max(0, end - offset - len(data)))
            del data[max(0, end - offset):]
            for at, chunk in self._dirty.get(path, ([], 0))[0]:
                lo, hi = max(at, offset), min(at + len(chunk), offset + len(data))
                if lo < hi:
                    data[lo - offset:hi - offset] = chunk[lo - at:hi - at]
            return bytes(data)

        def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
            if self.eio:
                raise fuse.FuseOSError(errno.EIO)
            writes, size = self._dirty.get(path, ([], self._size(path)))
            writes.append((offset, bytes(data)))
            self._dirty[path] = (writes, max(size, offset + len(data)))
            return len(data)

        def truncate(self, path: str, length: int, fh: Any = None) -> None:
            writes, _ = self._dirty.get(path, ([], 0))
            kept = [(at, chunk[: max(0, length - at)]) for at, chunk in writes if at < length]
            self._dirty[path] = (kept, length)

        def fsync(self, path: str, datasync: int, fh: Any) -> None:
            if self.eio:
                raise fuse.FuseOSError(errno.EIO)
            if path not in self._dirty:
                return
            writes, size = self._dirty.pop(path)
            fd = os.open(self._p(path), os.O_WRONLY)
            try:
                for at, chunk in writes:
                    os.pwrite(fd, chunk, at)
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)

        def flush(self, path: str, fh: Any) -> None:
            pass  # close() promises nothing about durability

        def release(self, path: str, fh: Any) -> None:
            pass

        def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
            pass

    return Volatile


class PowerCut:
    """The volatile filesystem of `backing` mounted at `mount`, in its own process."""

    def __init__(self, backing: Path, mount: Path) -> None:
        self.backing, self.mount = backing, mount
        backing.mkdir(parents=True, exist_ok=True)
        mount.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.powercut", str(backing),
                                      str(mount)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.proc.kill()
                raise RuntimeError(f"the power-cut filesystem did not mount: {err}")
            time.sleep(0.05)

    def cut(self) -> None:
        """The power cut: the process holding the unsynced data dies at once."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], capture_output=True,
                       timeout=30)
        if self.proc.stderr:
            self.proc.stderr.close()


def main(argv: list[str]) -> None:
    import mfusepy as fuse

    backing, mount = argv
    fuse.FUSE(_operations()(os.path.realpath(backing)), mount, foreground=True,
              nothreads=True)


if __name__ == "__main__":
    main(sys.argv[1:])

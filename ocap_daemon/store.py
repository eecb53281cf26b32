"""The on-disk model store: immutable ``models/<version>/`` package dirs and the ``current`` and
``last_good`` pointer files (DESIGN.md "State on disk").

A package enters the store by a copy into ``models/.tmp-<version>-<random>``, fsync of every file and of
the directory, then one ``os.rename``; a crash leaves only a ``.tmp-*`` dir, which ``recover`` removes.
Pointers are written by tmp file + fsync + ``os.replace`` + fsync of the directory, so a reader sees the
old version or the new one, never a torn write. Every read verifies: a version dir must be a real
directory inside ``models/`` (no symlinks), its card must name that version, and every file must match
its sha256. At start ``recover`` picks what to serve and never fails because of a bad store, only
because of a bad base package.
"""

import calendar
import errno
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple, Union

from ocap_core.errors import OcapError
from ocap_core.package import CARD, Card, open_package, read_card, verify_files
from ocap_service import faults

from .errors import DaemonError

log = logging.getLogger(__name__)

CURRENT = "current"
LAST_GOOD = "last_good"
TMP_PREFIX = ".tmp-"
MAX_NAME = 200
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def valid_version(name: object) -> bool:
    """A version usable as a directory name and a pointer value: no ``/``, ``..``, leading dot or control chars."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable() and name == name.strip()
            and "/" not in name and "\\" not in name and ".." not in name and not name.startswith("."))


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; the data files are synced anyway
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path) -> str:
    """Copy one regular file (never through a symlink), fsync it, and return the sha256 of what was copied."""
    h = hashlib.sha256()
    sfd = os.open(str(src), os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(sfd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise OcapError(f"{src} is not a regular file")
        dfd = os.open(str(dst), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o640)
        with os.fdopen(dfd, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    return h.hexdigest()


def _created_ts(card: Card) -> Optional[float]:
    try:
        return float(calendar.timegm(time.strptime(card.created, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


class ModelStore:
    """Verified model versions under ``root/models`` plus the ``current`` and ``last_good`` pointers in ``root``."""

    def __init__(self, root: Union[str, Path], keep_versions: int = 5) -> None:
        if int(keep_versions) < 1:
            raise DaemonError(f"model store: keep_versions must be >= 1, got {keep_versions}")
        self.root = Path(root).absolute()
        self.models = self.root / "models"
        self.keep_versions = int(keep_versions)
        self._lock = threading.Lock()
        try:
            if not self.models.is_dir():
                self.models.mkdir(parents=True, mode=0o750)
                os.chmod(str(self.models), 0o750)
        except OSError as e:
            raise DaemonError(f"model store: cannot create {self.models}: {e}") from e

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r}, keep_versions={self.keep_versions})"

    # versions

    def add(self, package_dir: Union[str, Path]) -> Path:
        """Verify a package and copy it in as ``models/<card version>``; adding a stored version again is a no-op."""
        src = Path(package_dir).absolute()
        self._refuse_symlinks(src)
        try:
            card = open_package(str(src), verify=False).card
            verify_files(src, card, digests=False)      # the copy below hashes every byte against the card
        except (OcapError, OSError) as e:
            raise DaemonError(f"model package {src} refused: {e}") from e
        version = card.version
        if not valid_version(version):
            raise DaemonError(f"model package {src} refused: card version {version!r} is not a plain name "
                              f"(no '/', '..' or leading '.')")
        final = self.models / version
        with self._lock:
            if os.path.lexists(str(final)):
                problem = self._problem(version)
                if problem is None:
                    log.info("model %s is already in the store", version)
                    return final
                log.warning("model store: replacing %s: %s", final, problem)
            tmp = self._tmp_path(version)
            old: Optional[Path] = None
            try:
                os.mkdir(str(tmp), 0o750)
                copied = {name: _copy_file(src / name, tmp / name) for name in [CARD] + sorted(card.files)}
                for name, digest in card.files.items():
                    if copied[name] != digest:
                        raise OcapError(f"sha256 of {name} is {copied[name][:16]}..., the card says "
                                        f"{str(digest)[:16]}... (file corrupt, replaced or changed while copied)")
                again = read_card(tmp)
                if again.version != version or again.files != card.files:
                    raise OcapError(f"{CARD} changed while it was copied")
                _fsync_dir(tmp)
                faults.point("store.copied")
                if os.path.lexists(str(final)):
                    old = self._tmp_path(version)
                    os.rename(str(final), str(old))
                os.rename(str(tmp), str(final))
                _fsync_dir(self.models)
                faults.point("store.renamed")
            except (OcapError, OSError) as e:
                shutil.rmtree(str(tmp), ignore_errors=True)
                if isinstance(e, OSError) and os.path.lexists(str(final)) and self._problem(version) is None:
                    return final  # another process stored the same version first
                raise DaemonError(f"model package {src} refused: cannot store it as {final}: {e}") from e
            finally:
                if old is not None:
                    self._remove(old)
        log.info("model %s stored in %s", version, final)
        return final

    def get(self, version: str) -> Path:
        """The verified directory of a stored version (DaemonError if it is missing, corrupt or a symlink)."""
        problem = self._problem(version)
        if problem is not None:
            raise DaemonError(f"model store {self.models}: version {version!r} {problem}")
        return self.models / version

    def versions(self) -> List[str]:
        """The stored version names, sorted (partial ``.tmp-*`` copies and symlinks are not versions)."""
        try:
            entries = list(os.scandir(str(self.models)))
        except OSError:
            return []
        return sorted(e.name for e in entries if valid_version(e.name) and e.is_dir(follow_symlinks=False)
                      and os.path.isfile(os.path.join(e.path, CARD)))

    def prune(self) -> List[str]:
        """Delete all but the newest ``keep_versions`` versions (by card ``created``, else dir mtime), never the
        ones ``current`` or ``last_good`` name; returns the removed versions, oldest first."""
        with self._lock:
            protected = {self.current(), self.last_good()}
            dated = []
            for version in self.versions():
                path = self.models / version
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                try:
                    created = _created_ts(read_card(path))
                except OcapError:
                    created = None
                dated.append((mtime if created is None else created, mtime, version))
            dated.sort(reverse=True)
            removed = [v for _, _, v in dated[self.keep_versions:] if v not in protected]
            removed.reverse()
            for version in removed:
                tmp = self._tmp_path(version)
                try:
                    os.rename(str(self.models / version), str(tmp))
                except OSError as e:
                    log.warning("model store: cannot remove %s: %s", self.models / version, e)
                    continue
                self._remove(tmp)
                log.info("model store: pruned %s", version)
            if removed:
                _fsync_dir(self.models)
            return removed

    # pointers

    def current(self) -> Optional[str]:
        """The version the ``current`` pointer names, or None (missing, empty or not a plain version name)."""
        return self._read_pointer(CURRENT)[0]

    def last_good(self) -> Optional[str]:
        """The version the ``last_good`` pointer names, or None."""
        return self._read_pointer(LAST_GOOD)[0]

    def set_current(self, version: str, rehash: bool = True) -> None:
        """Point ``current`` at a stored version that verifies (``rehash=False``: right after ``add``
        checked every byte it copied, only that the version is in the store)."""
        self._set_pointer(CURRENT, version, rehash)

    def set_last_good(self, version: str) -> None:
        """Point ``last_good`` at a stored version that verifies."""
        self._set_pointer(LAST_GOOD, version)

    def clear_current(self) -> None:
        """Remove the ``current`` pointer, so the next start serves ``last_good`` or the base."""
        with self._lock:
            try:
                os.unlink(str(self.root / CURRENT))
            except FileNotFoundError:
                return
            except OSError as e:
                raise DaemonError(f"model store: cannot remove {self.root / CURRENT}: {e}") from e
            _fsync_dir(self.root)
        log.info("model store: current pointer cleared")

    # start-up

    def recover(self, base: Union[str, Path]) -> Tuple[Path, str]:
        """Choose what to serve at start: ``current`` if it verifies, else ``last_good``, else the base package.

        Also removes partial copies left by a crash. Returns (package dir, reason). A bad store only falls
        through; DaemonError only when the base package itself does not verify.
        """
        self._remove_leftovers()
        problems = []
        tried = set()
        for pointer in (CURRENT, LAST_GOOD):
            version, why = self._read_pointer(pointer)
            if version is None:
                if pointer == CURRENT or why != f"no {LAST_GOOD} pointer":
                    problems.append(why)
                continue
            if version in tried:
                problems.append(f"{pointer} {version}: same as current")
                continue
            tried.add(version)
            problem = self._problem(version)
            if problem is None:
                reason = pointer if not problems else f"{pointer} ({'; '.join(problems)})"
                log.log(logging.INFO if not problems else logging.WARNING, "model store: serving %s: %s",
                        version, reason)
                return self.models / version, reason
            problems.append(f"{pointer} {version}: {problem}")
            if pointer == CURRENT:
                log.warning("model store: current version %s is unusable: %s", version, problem)
        try:
            path = open_package(str(base) if isinstance(base, str) else str(Path(base).absolute())).path
        except (OcapError, OSError) as e:
            raise DaemonError(f"base model {base} does not verify: {e}") from e
        reason = f"base ({'; '.join(problems)})"
        log.log(logging.INFO if reason == "base (no current pointer)" else logging.WARNING,
                "model store: serving the base %s: %s", path, reason)
        return path, reason

    # internals

    def _problem(self, version: str) -> Optional[str]:
        """Why ``models/<version>`` cannot be served, or None when it verifies."""
        if not valid_version(version):
            return "is not a plain version name"
        path = self.models / version
        try:
            st = os.lstat(str(path))
            if stat.S_ISLNK(st.st_mode):
                return "is a symlink (refused)"
            if not stat.S_ISDIR(st.st_mode):
                return "is not a directory"
            if path.resolve().parent != self.models.resolve():
                return f"resolves outside {self.models}"
            links = sorted(e.name for e in os.scandir(str(path)) if e.is_symlink())
            if links:
                return f"contains a symlink ({links[0]}, refused)"
            card = open_package(str(path)).card
        except FileNotFoundError:
            return "is not in the store"
        except (OcapError, OSError) as e:
            return f"does not verify: {e}"
        if card.version != version:
            return f"holds a card for version {card.version!r}"
        return None

    def _refuse_symlinks(self, src: Path) -> None:
        if src.is_symlink():
            raise DaemonError(f"model package {src} refused: it is a symlink")
        if not src.is_dir():
            raise DaemonError(f"model package {src} refused: not a directory")
        for dirpath, dirnames, filenames in os.walk(str(src)):
            for name in dirnames + filenames:
                if os.path.islink(os.path.join(dirpath, name)):
                    raise DaemonError(f"model package {src} refused: {os.path.join(dirpath, name)} is a symlink")

    def _tmp_path(self, version: str) -> Path:
        return self.models / f"{TMP_PREFIX}{version}-{secrets.token_hex(4)}"

    def _remove(self, path: Path) -> None:
        """Delete a dir (or a symlink or file) without following symlinks; log, never raise."""
        try:
            if os.path.isdir(str(path)) and not os.path.islink(str(path)):
                shutil.rmtree(str(path))
            else:
                os.unlink(str(path))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("model store: cannot remove %s: %s", path, e)

    def _remove_leftovers(self) -> None:
        """Remove partial copies (``models/.tmp-*``) and pointer tmp files left by a crash."""
        with self._lock:
            for where, match in ((self.models, lambda n: n.startswith(TMP_PREFIX)),
                                 (self.root, lambda n: n.startswith((f".{CURRENT}.tmp-", f".{LAST_GOOD}.tmp-")))):
                try:
                    names = sorted(n for n in os.listdir(str(where)) if match(n))
                except OSError as e:
                    log.warning("model store: cannot list %s: %s", where, e)
                    continue
                for name in names:
                    self._remove(where / name)
                    log.warning("model store: removed %s left by an interrupted write", where / name)

    def _read_pointer(self, name: str) -> Tuple[Optional[str], str]:
        """(version, "") or (None, why there is none)."""
        path = self.root / name
        try:
            fd = os.open(str(path), os.O_RDONLY | _NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_NAME + 2)
        except FileNotFoundError:
            return None, f"no {name} pointer"
        except OSError as e:
            return None, f"{name} pointer unreadable ({e.strerror or e})"
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None, f"{name} pointer is not UTF-8"
        if not text:
            return None, f"{name} pointer is empty"
        if not valid_version(text):
            return None, f"{name} pointer holds {text[:40]!r}, not a version name"
        return text, ""

    def _set_pointer(self, name: str, version: str, rehash: bool = True) -> None:
        if not valid_version(version):
            raise DaemonError(f"model store: cannot set {name} to {version!r}: not a plain version name")
        if rehash:
            self.get(version)
        elif not (self.models / version / CARD).is_file():
            raise DaemonError(f"model store {self.models}: version {version!r} is not in the store")
        with self._lock:
            tmp = self.root / f".{name}.tmp-{secrets.token_hex(4)}"
            try:
                fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o640)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(version + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                faults.point(f"store.{name}.tmp_written")
                os.replace(str(tmp), str(self.root / name))
                _fsync_dir(self.root)
            except OSError as e:
                try:
                    os.unlink(str(tmp))
                except OSError:
                    pass
                raise DaemonError(f"model store: cannot write the {name} pointer {self.root / name}: {e}") from e
        log.info("model store: %s -> %s", name, version)

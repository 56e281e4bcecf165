"""The Maildir delivery agent: put one message into a local mailbox, durably and atomically.

Layout (operator contract): ``mail_root/<domain>/<localpart>/{tmp,new,cur}``, created on
demand with mode 0700, and Maildir++ sub-folders such as ``.../<localpart>/.Junk/``. A message
is written to ``tmp/``, fsync'd, hard-linked into ``new/`` and ``new/`` is fsync'd: a reader
never sees a partial file and a message reported delivered survives a crash. The file starts
with ``Return-Path:`` and ``Delivered-To:``; the message's CRLF line ends become LF.

The first delivery into a Maildir by a process also removes files older than 36 hours from
its ``tmp/`` (left by a writer that died mid-delivery, as the Maildir convention says).

It does not route (it is handed a final local address), does not add the Received header
(the caller's message bytes already start with it), enforce quotas or index mailboxes.
Follows the Maildir specification (cr.yp.to/proto/maildir.html: unique names, tmp -> new),
Maildir++ (``,S=<size>`` and dot-folders) and RFC 5321 section 4.4 (Return-Path).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ..durable import fsync_dir as _fsync_dir
from ..durable import fsync_file as _fsync_file
from ..durable import write_all
from ..errors import PostwrightError
from ..protocol.address import AddressError
from .routing import mailbox_key

_SUBDIRS = ("cur", "new", "tmp")  # tmp last: an existing tmp/ implies new/ and cur/ exist
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_TMP_MAX_AGE = 36 * 3600  # seconds: older files in tmp/ are leftovers of a crashed writer
_SWEEP_MEMORY = 100_000  # Maildirs remembered as swept (beyond that, no more sweeping)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_deliveries = itertools.count(1)  # the "Q" part of unique names: deliveries by this process
_pid = [os.getpid()]  # the "P" part, looked up once (and again in a forked child)
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))
_WRITE_RUN = 256 * 1024  # bytes gathered before a writev
_PLACES_MEMORY = 4096  # (address, folder) -> Maildir paths remembered


class MaildirNameError(PostwrightError, ValueError):
    """The address or folder would not make a safe path under mail_root (a permanent error)."""


@dataclass(frozen=True, slots=True)
class DeliveryItem:
    """One message for one mailbox. ``chunks`` is consumed once: give each item its own."""

    address: str
    chunks: Iterable[bytes]
    return_path: str
    delivered_to: str
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class _Place:
    """A Maildir's paths as text, made once per mailbox: joining Path objects for every
    message cost more than writing its file."""

    maildir: Path
    tmp: str  # ".../tmp/"
    new: str  # ".../new/"
    is_folder: bool


@dataclass(slots=True)
class _Staged:
    index: int
    place: _Place
    tmp: str
    size: int
    final: str | None = None


class MaildirDelivery:
    """Delivers into Maildirs under ``mail_root``; ``hostname`` goes into the file names."""

    def __init__(self, mail_root: Path, *, hostname: str) -> None:
        self.mail_root = Path(mail_root)
        self._host = _escape_host(hostname)
        self._swept: set[Path] = set()  # Maildirs whose tmp/ this process has cleaned
        self._places: dict[tuple[str, str | None], _Place] = {}

    def maildir_for(self, address: str, folder: str | None = None) -> Path:
        """The Maildir of a local address (and optional Maildir++ folder); nothing is created."""
        try:
            local, domain = mailbox_key(address)
        except AddressError as exc:
            raise MaildirNameError(f"not a mailbox address: {address!r}") from exc
        path = self.mail_root / _safe_component(domain) / _safe_component(local)
        if folder is not None:
            path = path / _folder_component(folder)
        return path

    def deliver(self, address: str, chunks: Iterable[bytes], *, return_path: str,
                delivered_to: str, folder: str | None = None) -> Path:
        """Deliver one message; return its path in ``new/``. On error nothing is left behind."""
        item = DeliveryItem(address, chunks, return_path, delivered_to, folder)
        [result] = self.deliver_batch([item])
        if isinstance(result, Exception):
            raise result
        return result

    def deliver_batch(self, items: Sequence[DeliveryItem]) -> list[Path | Exception]:
        """:meth:`deliver_batch_paths` with each final path as a Path."""
        return [r if isinstance(r, Exception) else Path(r)
                for r in self.deliver_batch_paths(items)]

    def deliver_batch_paths(self, items: Sequence[DeliveryItem]) -> list[str | Exception]:
        """Deliver several messages with as few syncs as the platform allows.

        All files are written into ``tmp/`` first. On Linux one ``syncfs`` then makes all of
        them durable, they are linked into ``new/``, and a second ``syncfs`` makes the links
        durable: two syncs for the whole batch, and no crash can leave an empty or partial
        file in ``new/``. Elsewhere each file is fsync'd, linked, and each touched ``new/`` is
        fsync'd once. The result has one entry per item: the final path, or the exception
        that stopped that item (its files are removed).
        """
        results: list[str | Exception | None] = [None] * len(items)
        staged: list[_Staged] = []
        try:
            for index, item in enumerate(items):
                try:
                    staged.append(self._write(index, item))
                except Exception as exc:
                    results[index] = exc
            if _SYNCFS is not None and staged:
                self._sync_all(staged, results)
                staged = self._each(staged, results, self._publish)
                self._sync_all(staged, results, published=True)
                for s in staged:
                    if results[s.index] is None:
                        results[s.index] = s.final
                return [r if r is not None else RuntimeError("not delivered") for r in results]
            staged = self._each(staged, results, lambda s: _fsync_file(s.tmp))
            staged = self._each(staged, results, self._publish)
            by_dir: dict[str, list[_Staged]] = {}
            for s in staged:
                by_dir.setdefault(s.place.new, []).append(s)
            for new_dir, group in by_dir.items():
                try:
                    _fsync_dir(new_dir)
                except OSError as exc:
                    for s in group:  # not known to be durable: report it, leave nothing
                        _remove(s.final)
                        s.final = None
                        results[s.index] = exc
                    continue
                for s in group:
                    assert s.final is not None
                    results[s.index] = s.final
        finally:
            for s in staged:
                _remove(s.tmp)
                if results[s.index] is None:  # interrupted by a BaseException
                    _remove(s.final)
        return [r if r is not None else RuntimeError("not delivered") for r in results]

    def _sync_all(self, staged: list[_Staged], results: list[str | Exception | None],
                  published: bool = False) -> None:
        """One syncfs for the file system holding the Maildirs; on failure fail them all."""
        try:
            _syncfs(self.mail_root)
        except OSError as exc:
            for s in staged:
                _remove(s.tmp)
                if published:
                    _remove(s.final)
                    s.final = None
                results[s.index] = exc
            staged.clear()

    @staticmethod
    def _each(staged: list[_Staged], results: list[str | Exception | None],
              step: Callable[[_Staged], object]) -> list[_Staged]:
        """Run ``step`` on every staged file; drop (and clean up) the ones that fail."""
        kept = []
        for s in staged:
            try:
                step(s)
            except Exception as exc:
                results[s.index] = exc
                _remove(s.tmp)
                _remove(s.final)
                continue
            kept.append(s)
        return kept

    def _place(self, address: str, folder: str | None) -> _Place:
        key = (address, folder)
        place = self._places.get(key)
        if place is None:
            maildir = self.maildir_for(address, folder)
            base = os.fspath(maildir)
            place = _Place(maildir, base + "/tmp/", base + "/new/", folder is not None)
            if len(self._places) >= _PLACES_MEMORY:
                self._places.clear()
            self._places[key] = place
        return place

    def _write(self, index: int, item: DeliveryItem) -> _Staged:
        place = self._place(item.address, item.folder)
        head = (f"Return-Path: <{_envelope_value(item.return_path, strip_angles=True)}>\n"
                f"Delivered-To: {_envelope_value(item.delivered_to)}\n").encode()
        fd, tmp = self._create_tmp(place)
        try:
            # Straight to the descriptor, in runs of up to 256 KiB: a buffered file object
            # costs an fstat and an lseek per message before the first byte.
            size = 0
            run: list[bytes] = [head]
            held = len(head)
            for piece in _crlf_to_lf(item.chunks):
                run.append(piece)
                held += len(piece)
                if held >= _WRITE_RUN:
                    size += write_all(fd, run)
                    run, held = [], 0
            size += write_all(fd, run)
        except BaseException:
            _remove(tmp)
            raise
        finally:
            os.close(fd)
        return _Staged(index, place, tmp, size)

    def _create_tmp(self, place: _Place) -> tuple[int, str]:
        maildir = place.maildir
        if maildir not in self._swept and len(self._swept) < _SWEEP_MEMORY:
            self._swept.add(maildir)
            _sweep_tmp(maildir / "tmp", time.time() - _TMP_MAX_AGE)
        for attempt in range(10):
            tmp = place.tmp + self._unique_name()
            try:
                return os.open(tmp, _CREATE, _FILE_MODE), tmp
            except FileNotFoundError:
                if attempt:
                    raise
                _make_maildir(maildir, place.is_folder)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no unique name in tmp/", str(maildir))

    def _publish(self, s: _Staged) -> None:
        """Link the tmp file into new/ under its final name (with the Maildir++ size)."""
        for _attempt in range(10):
            final = f"{s.place.new}{self._unique_name()},S={s.size}"
            try:
                os.link(s.tmp, final)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                os.rename(s.tmp, final)  # a filesystem without hard links
            s.final = final  # the tmp/ name goes when the batch ends
            return
        raise FileExistsError(errno.EEXIST, "no unique name in new/", str(s.place.maildir))

    def _unique_name(self) -> str:
        now = time.time()
        secs = int(now)
        usec = int((now - secs) * 1_000_000)
        return f"{secs}.M{usec}P{_pid[0]}Q{next(_deliveries)}.{self._host}"


def _sweep_tmp(tmp: Path, cutoff: float) -> None:
    """Remove files in ``tmp/`` last touched before ``cutoff``: what a writer that died
    mid-delivery left (the Maildir convention: 36 hours). Errors are ignored."""
    try:
        entries = os.scandir(tmp)
    except OSError:
        return
    with entries:
        for entry in entries:
            try:
                if (entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                    os.unlink(entry.path)
            except OSError:
                continue


def _crlf_to_lf(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """CRLF -> LF over a stream; a CR at the end of one chunk waits for the next one."""
    pending_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if pending_cr:
            chunk = b"\r" + chunk
        pending_cr = chunk.endswith(b"\r")
        if pending_cr:
            chunk = chunk[:-1]
        if chunk:
            yield chunk.replace(b"\r\n", b"\n")
    if pending_cr:
        yield b"\r"


def _envelope_value(text: str, *, strip_angles: bool = False) -> str:
    if any(c in text for c in "\r\n\0"):
        raise MaildirNameError("envelope value contains CR, LF or NUL")
    if strip_angles and text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def _safe_component(name: str) -> str:
    """A single, harmless directory name, or MaildirNameError."""
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name
            or any(c < " " or c == "\x7f" for c in name)
            or len(name.encode("utf-8", "surrogatepass")) > 255):
        raise MaildirNameError(f"unsafe mailbox path component: {name!r}")
    return name


def _folder_component(folder: str) -> str:
    """A Maildir++ folder: "Junk" or ".Junk" -> ".Junk"; "Lists.Python" nests."""
    name = folder[1:] if folder.startswith(".") else folder
    if not name or any(not part for part in name.split(".")):
        raise MaildirNameError(f"bad Maildir++ folder name: {folder!r}")
    return "." + _safe_component(name)


def _escape_host(hostname: str) -> str:
    """The host part of unique names: "/", ":" and "," (and anything odd) as octal escapes."""
    out: list[str] = []
    for ch in hostname:
        if ch in "/:,\\" or not "!" <= ch <= "~":
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out) or "localhost"


def _make_maildir(maildir: Path, is_folder: bool) -> None:
    """Create the Maildir (and the directories above it) mode 0700, durably."""
    if is_folder:  # a Maildir++ folder lives inside the account's own Maildir
        _make_maildir(maildir.parent, False)
    missing = []
    path = maildir
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        _mkdir(directory)
    for sub in _SUBDIRS:
        _mkdir(maildir / sub)
    if is_folder:  # Maildir++ marks folders so readers know they hold no sub-folders
        marker = maildir / "maildirfolder"
        if not marker.exists():
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, _FILE_MODE))
            _fsync_dir(maildir)


def _mkdir(path: Path) -> None:
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return
    _fsync_dir(path.parent)


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux), or None where it does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return cast(Callable[[int], int], func)


_SYNCFS = _load_syncfs()


def _syncfs(path: Path) -> None:
    """Flush every dirty page and inode of the file system holding ``path`` (GIL released)."""
    assert _SYNCFS is not None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

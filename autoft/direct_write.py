"""safetensors files written around the page cache (``O_DIRECT``) where that is faster.

A buffered write lands in fresh page-cache pages. On a virtual machine that hands freed memory
back to its host (virtio-balloon free page reporting), each fresh page faults in from the host:
measured on the 2-core development VM, 100 MB written buffered took 0.6-0.7 s (150 MB/s) while
``dd oflag=direct`` wrote 1.8 GB/s, so a MiniLM checkpoint with AdamW's moments (270 MB) spent
~1 s in the kernel. On a machine with a fast page cache and a slow disk it is the other way
round, so :func:`save_file` times both on a process's real writes and keeps the faster (Chooser).

The bytes are those of ``safetensors.torch.save_file`` (tests compare them); only the way they
reach the disk differs: through one reused, page-aligned buffer, as ``O_DIRECT`` requires.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file as buffered_save_file

Mode = Literal["auto", "direct", "buffered"]

ALIGN = 4096  # O_DIRECT's alignment of buffer, offset and length; a multiple of any sector size
CHUNK = 8 << 20
# Linux and the BSDs have it; macOS and Windows do not (there every write is buffered).
O_DIRECT = getattr(os, "O_DIRECT", 0)

# safetensors' dtype names, in its own order (Rust's Dtype enum): files list tensors by
# descending dtype, then by name.
_DTYPES: list[tuple[torch.dtype, str]] = [
    (torch.bool, "BOOL"), (torch.uint8, "U8"), (torch.int8, "I8"),
    (getattr(torch, "float8_e5m2", None), "F8_E5M2"), (getattr(torch, "float8_e4m3fn", None), "F8_E4M3"),
    (torch.int16, "I16"), (torch.uint16, "U16"), (torch.float16, "F16"), (torch.bfloat16, "BF16"),
    (torch.int32, "I32"), (torch.uint32, "U32"), (torch.float32, "F32"), (torch.float64, "F64"),
    (torch.int64, "I64"), (torch.uint64, "U64"),
]
_NAME = {dt: name for dt, name in _DTYPES if dt is not None}
_RANK = {dt: i for i, (dt, _) in enumerate(_DTYPES) if dt is not None}

_lock = threading.Lock()  # the bounce buffer, the choosers, the probes' cache, the dispatcher
_buffer: tuple[mmap.mmap, np.ndarray] | None = None


def layout(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
           ) -> tuple[bytes, list[tuple[str, torch.Tensor]], int]:
    """The file's first bytes (length + JSON header, space-padded to 8), the tensors in file order
    and the bytes of their data."""
    for name, t in tensors.items():
        if t.dtype not in _NAME:
            raise ValueError(f"tensor {name}: dtype {t.dtype} has no safetensors name")
    order = sorted(tensors.items(), key=lambda kv: (-_RANK[kv[1].dtype], kv[0]))
    head: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    offset = 0
    for name, t in order:
        size = t.numel() * t.element_size()
        head[name] = {"dtype": _NAME[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order, offset


def _bounce() -> tuple[mmap.mmap, np.ndarray]:
    # One per process, kept: its pages stay faulted in, which is the point (Ray runs each trial
    # on a new thread, so a per-thread buffer would be faulted in afresh every trial).
    global _buffer
    if _buffer is None:
        buf = mmap.mmap(-1, CHUNK)  # anonymous mappings are page-aligned
        _buffer = buf, np.frombuffer(buf, dtype=np.uint8)
    return _buffer


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        n = os.write(fd, view)
        if n % ALIGN and n < len(view):
            # The rest would start unaligned, which O_DIRECT refuses: not a refusal of O_DIRECT.
            raise OSError(errno.EIO, f"short O_DIRECT write ({n} of {len(view)} bytes)")
        view = view[n:]


def _chunks(header: bytes, order: Iterable[tuple[str, torch.Tensor]]) -> Iterable[np.ndarray]:
    yield np.frombuffer(header, dtype=np.uint8)
    for _, t in order:
        if t.numel():
            yield t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _open_direct(path: str, flags: int) -> int:
    return os.open(path, os.O_WRONLY | os.O_CLOEXEC | O_DIRECT | flags, 0o600)


def write_direct(tensors: dict[str, torch.Tensor], filename: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> None:
    """Write with ``O_DIRECT`` (see :func:`accepts_direct` for where that works) into a temporary
    file beside ``filename``, then rename it into place, as safetensors' own writer does (0600)."""
    header, order, data_bytes = layout(tensors, metadata)
    total = len(header) + data_bytes
    filename = os.fspath(filename)
    tmp = f"{filename}.{os.getpid()}.{threading.get_ident()}.tmp"
    with _lock:
        buf, arr = _bounce()
        view = memoryview(buf)
        fd = _open_direct(tmp, os.O_CREAT | os.O_TRUNC)
        try:
            fill = 0
            for src in _chunks(header, order):
                pos = 0
                while pos < len(src):
                    n = min(CHUNK - fill, len(src) - pos)
                    arr[fill:fill + n] = src[pos:pos + n]
                    fill, pos = fill + n, pos + n
                    if fill == CHUNK:
                        _write_all(fd, view)
                        fill = 0
            if fill:
                padded = fill + (-fill % ALIGN)
                arr[fill:padded] = 0
                _write_all(fd, view[:padded])
            os.ftruncate(fd, total)  # the last block's padding
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
    os.replace(tmp, filename)


_accepts: dict[int, bool] = {}  # st_dev -> O_DIRECT works there


def accepts_direct(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder``'s filesystem takes an aligned ``O_DIRECT`` write (not tmpfs, some FUSE,
    nor an OS without it: macOS, Windows); probed once per filesystem and process."""
    if not O_DIRECT:
        return False
    dev = os.stat(folder).st_dev
    with _lock:
        if dev not in _accepts:
            probe = os.path.join(folder, f".autoft-direct-probe-{os.getpid()}-{threading.get_ident()}")
            try:
                fd = _open_direct(probe, os.O_CREAT | os.O_EXCL)
                try:
                    _write_all(fd, memoryview(_bounce()[0])[:4096])  # not ALIGN: a wrong ALIGN must fail writes, not read as a refusal
                finally:
                    os.close(fd)
                    os.unlink(probe)
                _accepts[dev] = True
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
                _accepts[dev] = False
        return _accepts[dev]


def _safetensors_would_refuse(tensors: dict[str, torch.Tensor]) -> bool:
    """Inputs left to safetensors' own writer, which raises its own errors for them (non-contiguous,
    shared memory) or names dtypes this module does not (complex, fp4, e8m0)."""
    storages = set()
    for t in tensors.values():
        if t.dtype not in _NAME or not t.is_contiguous():
            return True
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages:
                return True
            storages.add(ptr)
    return False


class Chooser:
    """Which way to write, learnt from this process's own writes of at least ``min_bytes``.

    Neither way wins everywhere, and a short probe is no guide: freed page-cache pages are reused
    while still backed, so a 16 MB probe written buffered took 6 ms against 15 ms direct here,
    while checkpoints (new bytes kept in storage: the page cache grows) took ~0.9 s buffered against
    0.15 s direct. So each way is tried on real writes (buffered first) and the faster by its latest
    rate is used; the other is tried again after ``explore_every`` writes, in case the machine's
    state changed, and the wait doubles (up to ``max_explore_every``) each time that changed nothing.
    (Starting at 8, a 6-trial search here re-checked 3 times, each a buffered write of 90-180 MB
    at ~300 MB/s: hence 32.)
    """

    def __init__(self, min_bytes: int = 8 << 20, explore_every: int = 32, max_explore_every: int = 256) -> None:
        self.min_bytes, self.explore_every, self.max_explore_every = min_bytes, explore_every, max_explore_every
        self.rate: dict[bool, float] = {}  # direct? -> bytes per second of its latest write
        self.since_explore = 0

    def best(self) -> bool:
        return self.rate.get(True, 0.0) > self.rate.get(False, 0.0)

    def pick(self, nbytes: int) -> bool:
        """True: write this one directly."""
        if nbytes < self.min_bytes:
            return self.best()
        for direct in (False, True):
            if direct not in self.rate:
                return direct
        return not self.best() if self.since_explore >= self.explore_every else self.best()

    def record(self, direct: bool, nbytes: int, seconds: float) -> None:
        if nbytes < self.min_bytes:
            return
        tried_both, before = len(self.rate) == 2, self.best()
        self.rate[direct] = nbytes / max(seconds, 1e-9)
        if not tried_both:
            return
        if direct != before:  # the exploring write
            self.since_explore = 0
            if self.best() == before:
                self.explore_every = min(2 * self.explore_every, self.max_explore_every)
        else:
            self.since_explore += 1


_choosers: dict[int, Chooser] = {}  # st_dev -> this process's record there


def _chooser(folder: Path) -> Chooser:
    dev = os.stat(folder).st_dev
    with _lock:
        return _choosers.setdefault(dev, Chooser())


def save_file(tensors: dict[str, torch.Tensor], filename: str | os.PathLike[str],
              metadata: dict[str, str] | None = None, mode: Mode = "auto") -> None:
    """``safetensors.torch.save_file``, written directly where ``mode`` (auto: this process's
    measured rates on that filesystem) says; buffered where the filesystem or OS has no O_DIRECT."""
    folder = Path(filename).parent
    if mode == "buffered" or _safetensors_would_refuse(tensors) or not accepts_direct(folder):
        buffered_save_file(tensors, filename, metadata=metadata)
        return
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    chooser = _chooser(folder) if mode == "auto" else None
    direct = chooser.pick(nbytes) if chooser else True
    t0 = time.perf_counter()
    if direct:
        write_direct(tensors, filename, metadata)
    else:
        buffered_save_file(tensors, filename, metadata=metadata)
    if chooser:
        chooser.record(direct, nbytes, time.perf_counter() - t0)


_mode: contextvars.ContextVar[Mode | None] = contextvars.ContextVar("autoft_checkpoint_writes", default=None)
_original: Any = None


def _dispatch(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
    mode = _mode.get()
    if mode is None:  # a save_pretrained outside for_save_pretrained: Hugging Face's own write
        _original(tensors, filename, metadata=metadata)
    else:
        save_file(tensors, filename, metadata, mode)


@contextmanager
def for_save_pretrained(mode: Mode) -> Any:
    """Route ``save_pretrained``'s safetensors writes, in this thread, through :func:`save_file`
    (its tied-weight and key handling stays Hugging Face's; only the file write changes). The
    hook is installed once and reads the mode from a context variable, so concurrent saves in
    other threads keep their own way and nothing is left patched by an unlucky interleaving."""
    global _original
    from transformers import modeling_utils

    if mode == "buffered" or not hasattr(modeling_utils, "safe_save_file"):
        yield
        return
    with _lock:
        if modeling_utils.safe_save_file is not _dispatch:
            _original = modeling_utils.safe_save_file
            modeling_utils.safe_save_file = _dispatch
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)

"""The filesystem Ray Tune writes a search's storage through: local, with copies made as hard links.

``tune.report`` persists a trial's checkpoint by copying its folder into the search's
storage (``pyarrow.fs.copy_files``): every byte of the model and AdamW's moments written
a second time, while the trial waits. When the source and the destination are the same
filesystem object, pyarrow asks that filesystem to copy each file, and this one links
it instead: the checkpoint is written once, in a scratch folder on the storage's own
device (``ray_trainable``), and becomes Ray's copy at no cost. The scratch name is then
deleted; Ray's name keeps the data.

Safe because nothing writes into a checkpoint file after the trial hands it over: the
trial writes every checkpoint to a new folder (``checkpoint.save_checkpoint``) and only
deletes it afterwards, and Ray never modifies a persisted checkpoint. Where a link
cannot be made (another device, a filesystem without hard links) the file is copied,
as Ray would have. Everything else goes to pyarrow's own ``LocalFileSystem``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


class LinkingLocalFileSystem(pafs.FileSystemHandler):
    """pyarrow's local filesystem, with ``copy_file`` making a hard link where it can."""

    TYPE_NAME = "autoft-local"

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()

    # pyarrow links only between filesystems that compare equal; every instance is the same
    # filesystem, and the one Ray unpickles in a worker must equal the one the trial made.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkingLocalFileSystem)

    def __hash__(self) -> int:
        return hash(self.TYPE_NAME)

    def get_type_name(self) -> str:
        return self.TYPE_NAME

    def copy_file(self, src: str, dest: str) -> None:
        # copy_file replaces dest: unlink it first, so an existing name is never written
        # through (it may share its data with another link).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        try:
            os.link(src, dest)
        except FileNotFoundError:
            raise
        except OSError:
            # Another device (EXDEV), or a filesystem without hard links: a FUSE-mounted bucket
            # answers ENOSYS, EPERM or EIO. A copy fails on its own if something else is wrong.
            self._fs.copy_file(src, dest)

    def normalize_path(self, path: str) -> str:
        return self._fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("autoft never empties the filesystem root")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    # compression=None: the PyFileSystem around this handler already (de)compresses by suffix.
    def open_input_stream(self, path: str) -> Any:
        return self._fs.open_input_stream(path, compression=None)

    def open_input_file(self, path: str) -> Any:
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self._fs.open_output_stream(path, compression=None, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self._fs.open_append_stream(path, compression=None, metadata=metadata)


def links_and_renames(folder: str | Path) -> bool:
    """Whether ``folder`` takes hard links and renamed folders, as checkpoints written there
    need (a FUSE-mounted bucket may take neither); False if it cannot be written at all."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=folder))
    except OSError:
        return False
    try:
        (probe / "a").write_bytes(b"")
        os.link(probe / "a", probe / "b")
        (probe / "d").mkdir()
        os.replace(probe / "d", probe / "e")
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def linking_local() -> pafs.FileSystem:
    """The filesystem to give Ray Tune (``storage_filesystem``) and each reported checkpoint."""
    return pafs.PyFileSystem(LinkingLocalFileSystem())


def is_local(fs: pafs.FileSystem | None) -> bool:
    """Whether paths on ``fs`` are paths on this machine (so a checkpoint is read where it lies)."""
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return True
    return isinstance(fs, pafs.PyFileSystem) and isinstance(fs.handler, LinkingLocalFileSystem)

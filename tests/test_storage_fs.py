"""Ray's copies of checkpoints into a search's storage are hard links, where they can be."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from autoft import storage_fs


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(4096))
    (root / "sub" / "state.json").write_text("{}")


def _copy(src: Path, dest: Path, fs: pafs.FileSystem) -> None:
    # What Ray's StorageContext.persist_current_checkpoint does.
    fs.create_dir(str(dest))
    pafs.copy_files(str(src), str(dest), source_filesystem=fs, destination_filesystem=fs)


def test_copy_links_every_file_and_the_copy_outlives_the_source(tmp_path: Path) -> None:
    src, dest = tmp_path / "scratch", tmp_path / "storage" / "checkpoint_000000"
    _tree(src)
    data = (src / "model.safetensors").read_bytes()
    _copy(src, dest, storage_fs.linking_local())
    for name in ("model.safetensors", "sub/state.json"):
        assert (dest / name).stat().st_ino == (src / name).stat().st_ino
    for f in src.rglob("*"):
        if f.is_file():
            f.unlink()
    assert (dest / "model.safetensors").read_bytes() == data
    assert (dest / "model.safetensors").stat().st_nlink == 1


def test_pyarrow_local_filesystem_copies(tmp_path: Path) -> None:
    """The check above can tell a link from a copy."""
    src, dest = tmp_path / "scratch", tmp_path / "storage"
    _tree(src)
    _copy(src, dest, pafs.LocalFileSystem())
    assert (dest / "model.safetensors").stat().st_ino != (src / "model.safetensors").stat().st_ino


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EPERM, errno.EIO])
def test_a_filesystem_that_cannot_link_gets_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   code: int) -> None:
    """Another device (EXDEV), or a FUSE-mounted bucket (ENOSYS, EPERM, EIO)."""
    def cross_device(src: str, dest: str) -> None:
        raise OSError(code, os.strerror(code))

    src, dest = tmp_path / "scratch", tmp_path / "storage"
    _tree(src)
    monkeypatch.setattr(storage_fs.os, "link", cross_device)
    _copy(src, dest, storage_fs.linking_local())
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (dest / "model.safetensors").stat().st_ino != (src / "model.safetensors").stat().st_ino


def test_a_missing_source_is_raised(tmp_path: Path) -> None:
    fs = storage_fs.LinkingLocalFileSystem()
    with pytest.raises(FileNotFoundError):
        fs.copy_file(str(tmp_path / "missing"), str(tmp_path / "dest"))


def test_compressed_suffixes_pass_through_unchanged(tmp_path: Path) -> None:
    """The PyFileSystem around the handler detects compression by suffix; the handler must not
    do it again (a .gz file would be compressed twice)."""
    import gzip

    fs = storage_fs.linking_local()
    data = gzip.compress(b"autoft " * 100)
    with fs.open_output_stream(str(tmp_path / "a.json.gz"), compression=None) as out:
        out.write(data)
    assert (tmp_path / "a.json.gz").read_bytes() == data
    with fs.open_input_stream(str(tmp_path / "a.json.gz"), compression=None) as f:
        assert f.read() == data
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "b.gz").write_bytes(data)
    # Ray's upload of a trial's files: from pyarrow's local filesystem into this one.
    fs.create_dir(str(tmp_path / "dest"))
    pafs.copy_files(str(tmp_path / "src"), str(tmp_path / "dest"),
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert (tmp_path / "dest" / "b.gz").read_bytes() == data


def test_links_and_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage_fs.links_and_renames(tmp_path / ".scratch")
    assert [p.name for p in (tmp_path / ".scratch").iterdir()] == []  # the probe leaves nothing
    (tmp_path / "file").write_text("")
    assert not storage_fs.links_and_renames(tmp_path / "file" / ".scratch")

    def no_links(src: str, dest: str) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(storage_fs.os, "link", no_links)
    assert not storage_fs.links_and_renames(tmp_path / ".scratch")


def test_trials_write_checkpoints_in_storage_where_links_work(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from autoft import controller
    from autoft.config import load_config

    cfg = load_config(None, [])
    assert controller._scratch_root(cfg, tmp_path) == tmp_path / controller.SCRATCH_DIR
    overlapped = load_config(None, ["train.overlap_checkpoints=true"])
    assert controller._scratch_root(overlapped, tmp_path) is None
    monkeypatch.setattr(controller, "links_and_renames", lambda folder: False)
    assert controller._scratch_root(cfg, tmp_path) is None


def test_copying_onto_a_name_never_writes_through_it(tmp_path: Path) -> None:
    """copy_file replaces the destination; a destination sharing its data with another name
    (an earlier link) leaves that other name as it was."""
    other = tmp_path / "other"
    other.write_bytes(b"old")
    dest = tmp_path / "dest"
    os.link(other, dest)
    src = tmp_path / "src"
    src.write_bytes(b"new")
    storage_fs.LinkingLocalFileSystem().copy_file(str(src), str(dest))
    assert dest.read_bytes() == b"new"
    assert other.read_bytes() == b"old"


def test_a_worker_s_unpickled_filesystem_equals_a_new_one() -> None:
    """pyarrow links only between equal filesystems: Ray unpickles the storage's in each
    worker, the trial makes its checkpoint's anew."""
    fs = pickle.loads(pickle.dumps(storage_fs.linking_local()))
    assert fs.equals(storage_fs.linking_local())
    assert not fs.equals(pafs.LocalFileSystem())


def test_is_local() -> None:
    assert storage_fs.is_local(storage_fs.linking_local())
    assert storage_fs.is_local(pafs.LocalFileSystem())
    assert storage_fs.is_local(None)
    assert not storage_fs.is_local(pafs.PyFileSystem(pafs.FSSpecHandler(_fsspec_memory())))


def _fsspec_memory() -> Any:
    from fsspec.implementations.memory import MemoryFileSystem

    return MemoryFileSystem()


@pytest.mark.ray
@pytest.mark.parametrize("linked", [True, False])
def test_tune_report_links_the_checkpoint_into_storage(local_ray: None, tmp_path: Path, linked: bool) -> None:
    """Through Ray Tune's real tune.report, with the storage filesystem the controller gives
    Ray (``linked``) or Ray's default."""
    from ray import tune

    from autoft.controller import SCRATCH_DIR

    storage = tmp_path / "runs"

    def trainable(config: dict[str, Any]) -> None:
        # Defined here so that Ray pickles it by value (workers cannot import this test module).
        from autoft import scratch
        from autoft.ray_trainable import _TuneReporter

        with scratch.folder(scratch.node_folder(storage / SCRATCH_DIR)) as root:
            ckpt = root / "checkpoint-epoch-1"
            ckpt.mkdir()
            (ckpt / "model.safetensors").write_bytes(os.urandom(1 << 20))
            inode = (ckpt / "model.safetensors").stat().st_ino
            _TuneReporter().report({"inode": inode, "score": 1.0}, ckpt)

    tuner = tune.Tuner(
        trainable,
        run_config=tune.RunConfig(name="links", storage_path=str(storage), verbose=0,
                                  storage_filesystem=storage_fs.linking_local() if linked else None),
    )
    [result] = list(tuner.fit())
    assert result.error is None
    persisted = Path(result.checkpoint.path) / "model.safetensors"
    assert persisted.parent.parent.parent == storage / "links"
    assert (persisted.stat().st_ino == result.metrics["inode"]) is linked
    assert persisted.stat().st_nlink == 1  # the scratch name went, Ray's stayed
    [node] = (storage / SCRATCH_DIR).iterdir()
    assert node.name.startswith("node-") and list(node.iterdir()) == []

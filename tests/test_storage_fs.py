"""Ray's copies of checkpoints into a search's storage are hard links, where they can be."""

from __future__ import annotations

import errno
import logging
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


def test_another_device_falls_back_to_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(src: str, dest: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    src, dest = tmp_path / "scratch", tmp_path / "storage"
    _tree(src)
    monkeypatch.setattr(storage_fs.os, "link", cross_device)
    _copy(src, dest, storage_fs.linking_local())
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (dest / "model.safetensors").stat().st_ino != (src / "model.safetensors").stat().st_ino


def test_other_link_errors_are_raised(tmp_path: Path) -> None:
    fs = storage_fs.LinkingLocalFileSystem()
    with pytest.raises(FileNotFoundError):
        fs.copy_file(str(tmp_path / "missing"), str(tmp_path / "dest"))


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


@pytest.fixture()
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield
    if started:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("linked", [True, False])
def test_tune_report_links_the_checkpoint_into_storage(local_ray: None, tmp_path: Path, linked: bool) -> None:
    """Through Ray Tune's real tune.report, with the storage filesystem the controller gives
    Ray (``linked``) or Ray's default."""
    from ray import tune

    from autoft.controller import SCRATCH_DIR, storage_filesystem

    storage = tmp_path / "runs"

    def trainable(config: dict[str, Any]) -> None:
        # Defined here so that Ray pickles it by value (workers cannot import this test module).
        from autoft import scratch
        from autoft.ray_trainable import _TuneReporter, node_scratch_root

        with scratch.folder(node_scratch_root(storage / SCRATCH_DIR)) as root:
            ckpt = root / "checkpoint-epoch-1"
            ckpt.mkdir()
            (ckpt / "model.safetensors").write_bytes(os.urandom(1 << 20))
            inode = (ckpt / "model.safetensors").stat().st_ino
            _TuneReporter().report({"inode": inode, "score": 1.0}, ckpt)

    tuner = tune.Tuner(
        trainable,
        run_config=tune.RunConfig(name="links", storage_path=str(storage), verbose=0,
                                  storage_filesystem=storage_filesystem() if linked else None),
    )
    [result] = list(tuner.fit())
    assert result.error is None
    persisted = Path(result.checkpoint.path) / "model.safetensors"
    assert persisted.parent.parent.parent == storage / "links"
    assert (persisted.stat().st_ino == result.metrics["inode"]) is linked
    assert persisted.stat().st_nlink == 1  # the scratch name went, Ray's stayed
    [node] = (storage / SCRATCH_DIR).iterdir()
    assert node.name.startswith("node-") and list(node.iterdir()) == []

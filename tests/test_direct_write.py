"""Checkpoint files written around the page cache: same bytes as safetensors, chosen by measurement."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from autoft import checkpoint as ckpt
from autoft import direct_write as dw


def _mixed() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.float16, torch.bfloat16,
              torch.int32, torch.uint32, torch.float32, torch.float64, torch.int64, torch.uint64,
              torch.float8_e4m3fn, torch.float8_e5m2]
    out = {}
    for i, dt in enumerate(dtypes):
        for j in range(2):  # same dtype, names sorted within it
            out[f"w{1 - j}.{i}.é"] = torch.randint(0, 2 if dt == torch.bool else 100, (3 + i, 5 + j), generator=g).to(dt)
    out["scalar"] = torch.tensor(1.5)
    out["empty"] = torch.zeros(0, 3)
    # Larger than the bounce buffer, and not a multiple of a block: crosses chunk boundaries.
    out["big"] = torch.randn(dw.CHUNK // 4 + 12345, generator=g)
    return out


def _direct_ok(folder: Path) -> None:
    # The byte checks below need a filesystem that takes O_DIRECT (not tmpfs). The probe is
    # separate from write_direct, so a bug in write_direct fails these tests, never skips them.
    if not dw.accepts_direct(folder):
        pytest.skip(f"{folder} refuses O_DIRECT")


def test_direct_bytes_equal_safetensors(tmp_path: Path) -> None:
    _direct_ok(tmp_path)
    tensors = _mixed()
    dw.write_direct(tensors, tmp_path / "a.safetensors", {"format": "pt"})
    assert (tmp_path / "a.safetensors").read_bytes() == save(tensors, metadata={"format": "pt"})
    dw.write_direct({"only": torch.ones(3)}, tmp_path / "b.safetensors")
    assert (tmp_path / "b.safetensors").read_bytes() == save({"only": torch.ones(3)})
    dw.write_direct({"only": torch.ones(3)}, tmp_path / "c.safetensors", {})
    assert (tmp_path / "c.safetensors").read_bytes() == save({"only": torch.ones(3)}, metadata={})
    assert oct((tmp_path / "c.safetensors").stat().st_mode & 0o777) == "0o600"  # as safetensors' own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    back = load_file(tmp_path / "a.safetensors")
    for k, v in tensors.items():
        assert torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)) if v.dim() else torch.equal(back[k], v)


def test_direct_replaces_a_file_never_writes_through_it(tmp_path: Path) -> None:
    _direct_ok(tmp_path)
    path, other = tmp_path / "x.safetensors", tmp_path / "linked"
    path.write_bytes(b"\xff" * 3 * dw.CHUNK)
    os.link(path, other)  # as Ray's copy into storage is, with autoft's filesystem
    dw.write_direct({"t": torch.arange(10.0)}, path)
    assert path.read_bytes() == save({"t": torch.arange(10.0)})
    assert other.read_bytes() == b"\xff" * 3 * dw.CHUNK


def test_a_write_error_is_raised_not_taken_for_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _direct_ok(tmp_path)
    monkeypatch.setattr(dw, "ALIGN", 1000)  # a padding bug: the kernel refuses the unaligned length
    with pytest.raises(OSError) as caught:
        dw.save_file({"t": torch.arange(10.0)}, tmp_path / "x", mode="direct")
    assert caught.value.errno == errno.EINVAL
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    assert dw.accepts_direct(tmp_path)


def test_inputs_safetensors_refuses_or_dtypes_it_alone_names_go_to_safetensors(tmp_path: Path) -> None:
    x = torch.ones(4)
    with pytest.raises(RuntimeError, match="share memory"):
        dw.save_file({"a": x, "b": x[:2]}, tmp_path / "shared", mode="direct")
    with pytest.raises(ValueError, match="non contiguous"):
        dw.save_file({"a": torch.ones(3, 3).t()}, tmp_path / "strided", mode="direct")
    c = {"c": torch.ones(2, dtype=torch.complex64)}
    dw.save_file(c, tmp_path / "complex", mode="direct")
    assert (tmp_path / "complex").read_bytes() == save(c)


@pytest.mark.parametrize("refuser", ["filesystem", "os"])
def test_refused_direct_falls_back_to_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuser: str) -> None:
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    if refuser == "filesystem":  # tmpfs, some FUSE
        monkeypatch.setattr(os, "open", no_direct)
    else:  # macOS, Windows: no os.O_DIRECT
        monkeypatch.setattr(dw, "O_DIRECT", 0)
    monkeypatch.setattr(dw, "_choosers", {})
    monkeypatch.setattr(dw, "_accepts", {})
    t = {"t": torch.randn(3 << 20)}  # 12 MB: would count
    for name, mode in (("a", "auto"), ("b", "auto"), ("c", "direct")):  # asked for: still written, buffered
        dw.save_file(t, tmp_path / name, mode=mode)
        assert (tmp_path / name).read_bytes() == save(t)
    assert not dw.accepts_direct(tmp_path) and dw._choosers == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no probe left


def test_other_os_errors_are_raised(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dw.save_file({"t": torch.ones(2)}, tmp_path / "missing" / "x", mode="direct")


def test_chooser_tries_both_then_keeps_the_faster() -> None:
    c = dw.Chooser(min_bytes=100, explore_every=2, max_explore_every=4)  # defaults: 32, 256
    assert c.pick(50) is False  # small: the best so far (nothing measured: buffered); not recorded
    c.record(False, 50, 1e-9)
    assert c.rate == {}
    assert c.pick(1000) is False
    c.record(False, 1000, 1.0)  # 1000 B/s buffered
    assert c.pick(1000) is True
    c.record(True, 1000, 0.1)  # 10000 B/s direct
    picks = []
    for _ in range(12):
        d = c.pick(1000)
        picks.append(d)
        c.record(d, 1000, 0.1 if d else 1.0)
    # Direct, re-checking buffered after 2, then 4 writes (doubling, capped at 4); small writes follow.
    assert picks == [True, True, False, True, True, True, True, False, True, True, True, True]
    assert c.pick(50) is True
    c.record(False, 1000, 0.01)  # buffered got faster (the machine changed): now it is the choice
    assert c.pick(1000) is False and c.pick(50) is False


def test_save_checkpoint_direct_matches_buffered(tiny_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForSequenceClassification

    _direct_ok(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    direct_calls = []
    real = dw.write_direct
    monkeypatch.setattr(dw, "write_direct", lambda *a, **k: (direct_calls.append(Path(a[1]).name), real(*a, **k)))
    a = ckpt.save_checkpoint(tmp_path / "direct", model, opt, {"epoch": 1}, writes="direct")
    # save_pretrained's own write went through it (a transformers that renames safe_save_file fails here).
    assert sorted(direct_calls) == ["model.safetensors", "optimizer.safetensors"]
    b = ckpt.save_checkpoint(tmp_path / "buffered", model, opt, {"epoch": 1}, writes="buffered")
    assert len(direct_calls) == 2
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    again = AutoModelForSequenceClassification.from_pretrained(a)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    model.save_pretrained(tmp_path / "plain")  # outside save_checkpoint: Hugging Face's own write
    assert len(direct_calls) == 2 and (tmp_path / "plain" / "model.safetensors").read_bytes() == \
        (b / "model.safetensors").read_bytes()

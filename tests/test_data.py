"""autoft.data: reading every supported input, label mapping, checks, sampling and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoft.config import DataConfig
from autoft.data import (
    TokenizedSplit,
    _pack,
    batches,
    load_text_data,
    prepare_data,
    read_table,
    to_text_split,
)
from autoft.errors import InputError

ROWS = [
    {"text": "free entry, win a prize now", "label": "spam"},
    {"text": "are we still on for lunch", "label": "ham"},
    {"text": "NA", "label": "ham"},  # must stay the string "NA", not a missing value
    {"text": "call now to claim your reward", "label": "spam"},
    {"text": "see you at home", "label": "ham"},
    {"text": "ok", "label": "ham"},
]


def write_table(path: Path, rows: list[dict], kind: str | None = None) -> Path:
    df = pd.DataFrame(rows)
    kind = kind or path.suffix.lstrip(".")
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif kind in ("jsonl", "json"):
        df.to_json(path, orient="records", lines=True)
    elif kind == "parquet":
        df.to_parquet(path, index=False)
    else:
        raise ValueError(kind)
    return path


def data_config(**kw) -> DataConfig:
    return DataConfig(name=None, **kw)


def refused(cfg: DataConfig, seed: int = 0) -> InputError:
    with pytest.raises(InputError) as info:
        load_text_data(cfg, seed)
    return info.value


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_reads_every_file_format(tmp_path: Path, suffix: str) -> None:
    path = write_table(tmp_path / f"train.{suffix}", ROWS)
    split = to_text_split(read_table(str(path), "data.train", "train"), "data.train", "text", "label")
    assert split.texts == [r["text"] for r in ROWS]
    assert split.labels == [r["label"] for r in ROWS]


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_load_text_data_from_each_format(tmp_path: Path, suffix: str) -> None:
    train = write_table(tmp_path / f"train.{suffix}", ROWS)
    val = write_table(tmp_path / f"val.{suffix}", ROWS[:3])
    text = load_text_data(data_config(train=str(train), validation=str(val)), seed=0)
    assert text.label_names == ["ham", "spam"]
    assert text.train.texts == [r["text"] for r in ROWS]
    assert text.validation.labels == ["spam", "ham", "ham"]
    assert text.test is None
    assert text.identity["n_train"] == len(ROWS)


def test_reads_saved_hf_dataset_dict(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "hf"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS),
        "validation": datasets.Dataset.from_list(ROWS[:2]),
    }).save_to_disk(str(folder))
    # The validation split is found in the same folder without data.validation.
    text = load_text_data(data_config(train=str(folder)), seed=0)
    assert text.train.texts == [r["text"] for r in ROWS]
    assert text.validation.texts == [r["text"] for r in ROWS[:2]]
    assert text.label_names == ["ham", "spam"]
    assert "held out" not in text.identity["validation"]


def test_hf_dataset_without_validation_split_is_held_out(tmp_path: Path) -> None:
    import datasets

    rows = ROWS * 5
    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    text = load_text_data(data_config(train=str(folder), validation_fraction=0.2), seed=0)
    assert len(text.validation.texts) == 6
    assert len(text.train.texts) == 24
    assert "held out" in text.identity["validation"]


def test_hf_dataset_missing_named_split_is_refused(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    err = refused(data_config(train=str(folder), validation=str(folder)))
    assert err.field == "data.validation"
    assert "validation" in err.problem


# --------------------------------------------------------------------------- labels


def test_string_labels_sorted_and_mapped_consistently(tmp_path: Path, tiny_model: Path) -> None:
    from autoft.models import load_tokenizer

    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["zebra", "apple", "mango", "apple"])]
    train = write_table(tmp_path / "train.csv", rows)
    val = write_table(tmp_path / "val.csv", [{"text": "v", "label": "mango"}, {"text": "w", "label": "zebra"}])
    text = load_text_data(data_config(train=str(train), validation=str(val)), seed=0)
    assert text.label_names == ["apple", "mango", "zebra"]
    data = prepare_data(text, load_tokenizer(tiny_model), 16, "tiny")
    assert data.train.labels.tolist() == [2, 0, 1, 0]
    assert data.validation.labels.tolist() == [1, 2]
    assert data.num_labels == 3


def test_integer_labels_sorted_numerically(tmp_path: Path, tiny_model: Path) -> None:
    from autoft.models import load_tokenizer

    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 9, 2])]
    train = write_table(tmp_path / "train.parquet", rows)
    val = write_table(tmp_path / "val.jsonl", [{"text": "v", "label": 10}, {"text": "w", "label": 2}])
    text = load_text_data(data_config(train=str(train), validation=str(val)), seed=0)
    assert text.label_names == ["2", "9", "10"]  # numeric order, not "10" < "2"
    data = prepare_data(text, load_tokenizer(tiny_model), 16, "tiny")
    assert data.train.labels.tolist() == [2, 0, 1, 0]
    assert data.validation.labels.tolist() == [2, 0]


def _unseen_validation_label(tmp_path: Path) -> DataConfig:
    train = write_table(tmp_path / "train.csv", ROWS)
    val = write_table(tmp_path / "val.csv", [{"text": "x", "label": "ham"}, {"text": "y", "label": "eggs"}])
    return data_config(train=str(train), validation=str(val))


def test_unseen_label_refused_when_encoding() -> None:
    from autoft.data import TextSplit, encode_labels

    with pytest.raises(InputError) as info:
        encode_labels(TextSplit(["a", "b"], ["ham", "eggs"]), ["ham", "spam"], "data.validation")
    assert info.value.field == "data.validation"
    assert "'eggs'" in info.value.problem


def test_unseen_validation_label_refused_before_tokenizing(tmp_path: Path) -> None:
    err = refused(_unseen_validation_label(tmp_path))
    assert err.field == "data.validation"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("key", "column"), [("text_column", "body"), ("label_column", "target")])
def test_missing_column_refused_naming_the_key(tmp_path: Path, key: str, column: str) -> None:
    train = write_table(tmp_path / "train.csv", ROWS)
    err = refused(data_config(train=str(train), validation=str(train), **{key: column}))
    assert err.field == f"data.{key}"
    assert f"'{column}'" in err.problem
    assert "text" in err.problem and "label" in err.problem  # lists the columns there are


def test_header_only_file_refused_as_empty(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\n")
    err = refused(data_config(train=str(train)))
    assert err.field == "data.train"
    assert "empty" in err.problem


def test_zero_byte_file_refused(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(b"")
    err = refused(data_config(train=str(train)))
    assert err.field == "data.train"
    assert "cannot read" in err.problem


def test_one_class_train_refused(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", [r for r in ROWS if r["label"] == "ham"])
    err = refused(data_config(train=str(train)))
    assert err.field == "data.train"
    assert "1 class" in err.problem


def test_unsupported_suffix_refused(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text("text,label\na,b\n")
    err = refused(data_config(train=str(train)))
    assert err.field == "data.train"
    assert "'.txt'" in err.problem


def test_nonexistent_path_refused(tmp_path: Path) -> None:
    err = refused(data_config(train=str(tmp_path / "nope.csv")))
    assert err.field == "data.train"
    assert "does not exist" in err.problem


def test_plain_folder_refused(tmp_path: Path) -> None:
    err = refused(data_config(train=str(tmp_path)))
    assert err.field == "data.train"
    assert "not a saved HF dataset" in err.problem


def test_bad_validation_file_names_validation(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", ROWS)
    err = refused(data_config(train=str(train), validation=str(tmp_path / "missing.csv")))
    assert err.field == "data.validation"


# --------------------------------------------------------------------------- held-out and sampling


def test_holdout_when_no_validation_split(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(50)]
    train = write_table(tmp_path / "train.csv", rows)
    cfg = data_config(train=str(train), validation_fraction=0.2)
    text = load_text_data(cfg, seed=7)
    assert len(text.validation.texts) == 10
    assert len(text.train.texts) == 40
    assert sorted(text.train.texts + text.validation.texts) == sorted(r["text"] for r in rows)
    assert not set(text.train.texts) & set(text.validation.texts)
    assert load_text_data(cfg, seed=7).validation.texts == text.validation.texts
    assert load_text_data(cfg, seed=8).validation.texts != text.validation.texts


def test_max_train_samples_deterministic_by_seed(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(100)]
    train = write_table(tmp_path / "train.csv", rows)
    cfg = data_config(train=str(train), validation=str(train), max_train_samples=20, max_eval_samples=10)
    first = load_text_data(cfg, seed=3)
    assert len(first.train.texts) == 20
    assert len(first.validation.texts) == 10
    assert len(set(first.train.texts)) == 20
    assert load_text_data(cfg, seed=3).train.texts == first.train.texts
    assert load_text_data(cfg, seed=4).train.texts != first.train.texts
    # Texts and labels stay paired.
    by_text = {r["text"]: r["label"] for r in rows}
    assert [by_text[t] for t in first.train.texts] == first.train.labels


def test_each_split_has_its_own_cap(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(100)]
    path = write_table(tmp_path / "all.csv", rows)
    text = load_text_data(data_config(train=str(path), validation=str(path), test=str(path), max_eval_samples=10), seed=0)
    assert (len(text.validation.texts), len(text.test.texts)) == (10, 100)  # the test split stays whole
    text = load_text_data(data_config(train=str(path), validation=str(path), test=str(path), max_test_samples=7), seed=0)
    assert (len(text.validation.texts), len(text.test.texts)) == (100, 7)


# --------------------------------------------------------------------------- batching


def synthetic_split(n: int = 53, seed: int = 0) -> TokenizedSplit:
    """Sequences of random length whose label is their own index, so batches can be traced back."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(5, 100, size=int(rng.integers(1, 40))) for _ in range(n)]
    return _pack(seqs, np.arange(n))


def order_of(split: TokenizedSplit, **kw) -> list[int]:
    return [int(i) for _, _, labels in batches(split, 8, 0, **kw) for i in labels]


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_pad_each_batch_to_its_own_longest(shuffle: bool) -> None:
    split = synthetic_split()
    lengths = split.lengths()
    assert lengths.max() > 30
    pad = 0
    widths = []
    for ids, mask, labels in batches(split, 8, pad, shuffle=shuffle, seed=1):
        assert ids.shape == mask.shape
        assert ids.shape[0] == len(labels) <= 8
        width = ids.shape[1]
        widths.append(width)
        assert width == int(lengths[labels.numpy()].max())
        for row, i in enumerate(labels.tolist()):
            n = int(lengths[i])
            assert mask[row, :n].eq(1).all() and mask[row, n:].eq(0).all()
            assert ids[row, :n].tolist() == split.sequence(i).tolist()
            assert ids[row, n:].eq(pad).all()
    assert min(widths) < max(widths)  # not padded to one global length


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_example_once_per_epoch(shuffle: bool) -> None:
    split = synthetic_split()
    order = order_of(split, shuffle=shuffle, seed=5)
    assert sorted(order) == list(range(len(split)))


def test_shuffle_reproducible_and_depends_on_seed() -> None:
    split = synthetic_split(n=200)
    assert order_of(split, shuffle=True, seed=1) == order_of(split, shuffle=True, seed=1)
    assert order_of(split, shuffle=True, seed=1) != order_of(split, shuffle=True, seed=2)
    assert order_of(split, shuffle=True, seed=1) != order_of(split, shuffle=False)


def test_eval_batches_sorted_by_length() -> None:
    split = synthetic_split(n=200)
    lengths = split.lengths()
    order = order_of(split, shuffle=False)
    assert np.all(np.diff(lengths[order]) >= 0)
    assert order == order_of(split, shuffle=False, seed=99)  # seed plays no part


def test_batches_ids_and_mask_dtypes() -> None:
    import torch

    ids, mask, labels = next(batches(synthetic_split(), 4, 0, shuffle=False))
    assert ids.dtype == mask.dtype == labels.dtype == torch.int64


# --------------------------------------------------------------------------- tokenizing


def test_prepare_data_truncates_to_max_length(tiny_model: Path, tiny_data: dict[str, Path]) -> None:
    from autoft.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    cfg = data_config(train=str(tiny_data["train"]), validation=str(tiny_data["validation"]))
    text = load_text_data(cfg, seed=0)
    data = prepare_data(text, tok, 12, str(tiny_model))
    for split in (data.train, data.validation):
        lengths = split.lengths()
        assert lengths.max() == 12
        assert lengths.min() >= 2  # [CLS] ... [SEP]
        for i in range(len(split)):
            seq = split.sequence(i)
            assert seq[0] == tok.cls_token_id and seq[-1] == tok.sep_token_id
    assert len(data.train) == len(text.train.texts)
    assert data.pad_token_id == tok.pad_token_id
    assert data.label_names == ["ham", "spam"]
    assert data.train.ids.dtype == np.int32
    longer = prepare_data(text, tok, 32, str(tiny_model))
    assert longer.train.lengths().max() > 12
    assert longer.fingerprint != data.fingerprint
    assert prepare_data(text, tok, 12, str(tiny_model)).fingerprint == data.fingerprint


def test_prepare_data_text_pairs(tmp_path: Path, tiny_model: Path) -> None:
    from autoft.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rows = [{"text": "free prize", "other": "call now", "label": "spam"},
            {"text": "see you", "other": "at home", "label": "ham"}]
    train = write_table(tmp_path / "train.csv", rows)
    cfg = data_config(train=str(train), validation=str(train), text_pair_column="other")
    data = prepare_data(load_text_data(cfg, seed=0), tok, 16, "tiny")
    seq = data.train.sequence(0).tolist()
    assert seq.count(tok.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]

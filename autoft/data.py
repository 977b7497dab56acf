"""Read a labelled text dataset, map labels, tokenize once, and batch with dynamic padding.

Tokenized splits are flat ``int32`` arrays plus offsets, so one copy can sit in
Ray's object store and be read by every trial without pickling Python lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoft.errors import InputError

FILE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BUILTIN_DATASETS = {"sms_spam": Path(__file__).parent / "datasets" / "sms_spam"}


@dataclass
class TextSplit:
    texts: list[str]
    labels: list[Any]


@dataclass
class TokenizedSplit:
    ids: np.ndarray  # int32, all sequences concatenated
    offsets: np.ndarray  # int64, len = n + 1
    labels: np.ndarray  # int64 label indices

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, idx: np.ndarray) -> TokenizedSplit:
        seqs = [self.sequence(int(i)) for i in idx]
        return _pack(seqs, self.labels[idx])


@dataclass
class PreparedData:
    train: TokenizedSplit
    validation: TokenizedSplit
    test: TokenizedSplit | None
    label_names: list[str]
    pad_token_id: int
    fingerprint: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _pack(seqs: list[np.ndarray], labels: np.ndarray) -> TokenizedSplit:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, dtype=np.int32)
    return TokenizedSplit(ids, offsets, np.asarray(labels, dtype=np.int64))


# --------------------------------------------------------------------------- reading


def resolve_builtin(name: str) -> Path:
    if name not in BUILTIN_DATASETS:
        raise InputError("data.name", f"unknown built-in dataset '{name}'",
                         "use one of: " + ", ".join(BUILTIN_DATASETS))
    return BUILTIN_DATASETS[name]


def _is_hf_saved(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()
    )


def read_table(spec: str, field: str, split: str) -> Any:
    """Return a pandas DataFrame for a file, a saved HF dataset, or ``hf:NAME``."""
    import pandas as pd

    if spec.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise InputError(field, "reading a hub dataset needs the 'datasets' package",
                             "pip install 'autoft[datasets]'") from None
        try:
            return datasets.load_dataset(spec[3:], split=split).to_pandas()
        except Exception as exc:  # network or name errors: one line, not a traceback
            raise InputError(field, f"cannot load hub dataset '{spec[3:]}': {str(exc).splitlines()[0]}",
                             "check the name and the network, or save it with save_to_disk") from None
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(field, f"'{spec}' does not exist", "give an existing CSV/JSONL/Parquet file or dataset folder")
    if _is_hf_saved(path):
        try:
            import datasets
        except ImportError:
            raise InputError(field, "a saved HF dataset needs the 'datasets' package",
                             "pip install 'autoft[datasets]'") from None
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise InputError(field, f"dataset '{spec}' has no split '{split}' (has {', '.join(ds)})",
                                 "name an existing split or give a file")
            ds = ds[split]
        return ds.to_pandas()
    if path.is_dir():
        raise InputError(field, f"'{spec}' is a folder but not a saved HF dataset", "give a file path")
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(field, f"unsupported file type '{path.suffix}'", "use .csv, .tsv, .jsonl or .parquet")
    try:
        if kind == "csv":
            return pd.read_csv(path, keep_default_na=False)
        if kind == "tsv":
            return pd.read_csv(path, sep="\t", keep_default_na=False)
        if kind == "jsonl":
            return pd.read_json(path, lines=True)
        return pd.read_parquet(path)
    except Exception as exc:
        raise InputError(field, f"cannot read '{spec}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         "check the file's format") from None


def to_text_split(df: Any, field: str, text_column: str, label_column: str,
                  text_pair_column: str | None = None) -> TextSplit:
    cols = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
    for col, key in zip(cols, ["data.text_column", "data.label_column", "data.text_pair_column"]):
        if col not in df.columns:
            raise InputError(key, f"column '{col}' not in {field} (columns: {', '.join(map(str, df.columns))})",
                             f"set {key} to one of those")
    if len(df) == 0:
        raise InputError(field, "split is empty", "give a file with at least one row")
    texts = df[text_column].astype(str).tolist()
    if text_pair_column:
        pairs = df[text_pair_column].astype(str).tolist()
        texts = list(zip(texts, pairs))  # type: ignore[arg-type]
    labels = df[label_column].tolist()
    return TextSplit(texts, labels)


def label_names_from(train: TextSplit) -> list[str]:
    values = set(train.labels)
    if len(values) < 2:
        raise InputError("data.train", f"labels hold {len(values)} class ({values})", "a classifier needs at least 2 classes")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(str(v) for v in values)


def encode_labels(split: TextSplit, label_names: list[str], field: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_names)}
    out = np.empty(len(split.labels), dtype=np.int64)
    for i, v in enumerate(split.labels):
        j = index.get(str(v))
        if j is None:
            raise InputError(field, f"label '{v}' does not occur in data.train",
                             "fix the label or add examples of it to the training split")
        out[i] = j
    return out


def sample_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


# --------------------------------------------------------------------------- tokenizing


def tokenize(tokenizer: Any, texts: list[Any], max_length: int) -> list[np.ndarray]:
    if texts and isinstance(texts[0], tuple):
        first, second = zip(*texts)
        enc = tokenizer(list(first), list(second), truncation=True, max_length=max_length)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]


def fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- batching


def batch_indices(
    split: TokenizedSplit,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    bucket: int = 50,
    keep_order: bool = False,
) -> list[np.ndarray]:
    """Example indices of each batch.

    Shuffled batches are length-bucketed: a random permutation is cut into
    chunks of ``bucket`` batches, each chunk sorted by length, and the batches
    shuffled again, so padding stays small without a fixed batch order.
    Unshuffled batches are sorted by length (evaluation), unless ``keep_order``.
    """
    n = len(split)
    lengths = split.lengths()
    if shuffle:
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        chunk = batch_size * bucket
        parts = [order[i : i + chunk] for i in range(0, n, chunk)]
        order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts]) if parts else order
        groups = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        return [groups[i] for i in rng.permutation(len(groups))]
    order = np.arange(n) if keep_order else np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(split: TokenizedSplit, idx: np.ndarray, pad_token_id: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, labels) tensors padded to this batch's longest sequence."""
    import torch

    lengths = split.lengths()
    width = int(lengths[idx].max())
    ids = np.full((len(idx), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        seq = split.sequence(int(i))
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(split.labels[idx])


def batches(
    split: TokenizedSplit,
    batch_size: int,
    pad_token_id: int,
    *,
    shuffle: bool,
    seed: int = 0,
    bucket: int = 50,
    keep_order: bool = False,
) -> Iterator[tuple[Any, Any, Any]]:
    """Yield (input_ids, attention_mask, labels) tensors padded per batch (see batch_indices)."""
    for idx in batch_indices(split, batch_size, shuffle=shuffle, seed=seed, bucket=bucket, keep_order=keep_order):
        yield collate(split, idx, pad_token_id)
# --------------------------------------------------------------------------- from config


@dataclass
class TextData:
    train: TextSplit
    validation: TextSplit
    test: TextSplit | None
    label_names: list[str]
    identity: dict[str, Any]


def _take(split: TextSplit, idx: np.ndarray) -> TextSplit:
    return TextSplit([split.texts[i] for i in idx], [split.labels[i] for i in idx])


def load_text_data(cfg: Any, seed: int) -> TextData:
    """Read and check every split named by a ``DataConfig`` (no tokenizer needed)."""
    if cfg.train is None:
        if cfg.name is None:
            raise InputError("data.train", "no training data given", "set data.train or data.name")
        root = resolve_builtin(cfg.name)
        train_spec, val_spec = str(root / "train.csv"), cfg.validation or str(root / "validation.csv")
        test_spec = cfg.test or str(root / "test.csv")
    else:
        train_spec, val_spec, test_spec = cfg.train, cfg.validation, cfg.test
        if val_spec is None and _is_hf_saved(Path(train_spec)) and (Path(train_spec) / "dataset_dict.json").is_file():
            splits = json.loads((Path(train_spec) / "dataset_dict.json").read_text()).get("splits", [])
            val_spec = train_spec if "validation" in splits else None
    cols = (cfg.text_column, cfg.label_column, cfg.text_pair_column)
    train = to_text_split(read_table(train_spec, "data.train", "train"), "data.train", *cols[:2], cols[2])
    label_names = label_names_from(train)
    if val_spec is not None:
        val = to_text_split(read_table(val_spec, "data.validation", "validation"), "data.validation", *cols[:2], cols[2])
    else:
        keep, held = holdout_split(len(train.texts), cfg.validation_fraction, seed)
        train, val = _take(train, keep), _take(train, held)
    test = None
    if test_spec is not None:
        test = to_text_split(read_table(test_spec, "data.test", "test"), "data.test", *cols[:2], cols[2])
    known = set(label_names)
    for split, field in ((val, "data.validation"), (test, "data.test")):
        unseen = sorted({str(v) for v in split.labels} - known) if split is not None else []
        if unseen:
            raise InputError(field, f"label(s) {unseen[:5]} do not occur in data.train",
                             "fix the labels or add examples of them to the training split")
    train = _take(train, sample_indices(len(train.texts), cfg.max_train_samples, seed))
    val = _take(val, sample_indices(len(val.texts), cfg.max_eval_samples, seed + 1))
    if test is not None:
        test = _take(test, sample_indices(len(test.texts), cfg.max_test_samples, seed + 2))
    if len(set(map(str, train.labels))) < 2:
        raise InputError("data.max_train_samples", f"the {len(train.texts)} sampled rows hold one class",
                         "raise data.max_train_samples")
    identity = {"train": train_spec, "validation": val_spec or f"{train_spec} (held out)",
                "test": test_spec, "n_train": len(train.texts), "n_validation": len(val.texts),
                "labels": label_names}
    return TextData(train, val, test, label_names, identity)


def prepare_data(text: TextData, tokenizer: Any, max_length: int, model_id: str) -> PreparedData:
    """Tokenize every split once; the result is shared by all trials of a search."""
    def encode(split: TextSplit, field: str) -> TokenizedSplit:
        return _pack(tokenize(tokenizer, split.texts, max_length), encode_labels(split, text.label_names, field))

    train = encode(text.train, "data.train")
    val = encode(text.validation, "data.validation")
    test = encode(text.test, "data.test") if text.test is not None else None
    fp = fingerprint(model_id, max_length, text.identity, train.ids[:64].tolist(), int(train.ids.sum()))
    return PreparedData(train, val, test, text.label_names, int(tokenizer.pad_token_id), fp)

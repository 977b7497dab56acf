"""The registered pyfunc model: logged without MLflow's type-hint nag, served with its explicit schema."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


@pytest.fixture()
def classifier_checkpoint(tiny_model: Path, tmp_path: Path) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        str(tiny_model), num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1})
    out = tmp_path / "best_checkpoint"
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(str(out))
    return out


def test_logged_model_has_no_type_hint_warning_and_keeps_its_schema(classifier_checkpoint, tmp_path, capfd,
                                                                    monkeypatch):
    import mlflow
    import pandas as pd

    from autoft.tracking import log_best_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("serving"))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = log_best_model(uri, run.info.run_id, classifier_checkpoint, "tiny-clf", max_length=32)
    said = capfd.readouterr()
    messages = [str(w.message) for w in caught] + [said.out, said.err]
    assert not any("Add type hints" in m for m in messages), messages
    assert info["version"] is not None

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(info["alias_uri"])
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["text"]
    texts = ["WINNER!! claim your free prize now", "see you at lunch"]
    labels = model.predict(pd.DataFrame({"text": texts}))
    assert len(labels) == 2 and set(labels) <= {"ham", "spam"}
    scored = model.predict(pd.DataFrame({"text": texts}), params={"return_scores": True})
    assert list(scored.columns) == ["label", "score"] and list(scored["label"]) == list(labels)
    assert ((scored["score"] >= 0.5) & (scored["score"] <= 1.0)).all()
    with pytest.raises(mlflow.exceptions.MlflowException):
        model.predict(pd.DataFrame({"words": texts}))  # the schema still names its column

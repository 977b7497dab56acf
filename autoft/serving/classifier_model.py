"""MLflow "model from code" for a fine-tuned text classifier.

Self-contained on purpose (torch, transformers, pandas only; no autoft import),
so the logged model loads and serves where autoft is not installed. MLflow
copies this file into the model and runs it at load time: nothing is unpickled.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = context.artifacts["checkpoint"]
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, use_safetensors=True)
        self.model.eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.max_length = int((context.model_config or {}).get("max_length", 128))
        self.torch = torch

    def _texts(self, model_input: Any) -> list[str]:
        if isinstance(model_input, pd.DataFrame):
            column = "text" if "text" in model_input.columns else model_input.columns[0]
            return model_input[column].astype(str).tolist()
        if isinstance(model_input, (list, tuple)):
            return [str(x) for x in model_input]
        return [str(model_input)]

    # pd.DataFrame is a hint MLflow infers no schema from: the explicit signature given at
    # logging stays the schema, and MLflow stops asking for type hints. A hint such as
    # list[str] would become the schema and change what predict receives.
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame | pd.Series:
        texts = self._texts(model_input)
        preds: list[str] = []
        scores: list[float] = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), 64):
                enc = self.tokenizer(texts[i : i + 64], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt")
                probs = self.model(**enc).logits.softmax(-1)
                best = probs.argmax(-1)
                preds += [self.labels[int(j)] for j in best]
                scores += probs.max(-1).values.tolist()
        if (params or {}).get("return_scores"):
            return pd.DataFrame({"label": preds, "score": scores})
        return pd.Series(preds, name="label")


mlflow.models.set_model(TextClassifier())

"""Serving the best checkpoint: an MLflow pyfunc model logged from code (no pickle)."""

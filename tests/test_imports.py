"""Import hygiene: the CLI starts fast and Ray workers never pay for MLflow."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_trial_worker_does_not_import_mlflow():
    mods = _modules_after("import autoft.ray_trainable")
    assert "mlflow" not in mods
    assert "autoft.cli" not in mods


def test_cli_help_imports_no_heavy_library():
    mods = _modules_after("import autoft.cli")
    for heavy in ("torch", "ray", "mlflow", "transformers", "optuna"):
        assert heavy not in mods, heavy

"""Follow-up to gpu_check.py: is the slow first bf16 epoch paid once per process or once per
trial, and does TF32 help fp32? Five full fine-tuning trials in one process.

    HF_HUB_OFFLINE=1 python benchmarks/gpu_probe.py MODEL_DIR DATA_DIR
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check as g  # noqa: E402

a = argparse.Namespace(model=sys.argv[1], data=sys.argv[2], samples=2000, epochs=3, batch_size=32, max_length=64)
prepared = g.prepare(a)
for name, prec, tf32 in (("bf16 #1", "bf16", False), ("bf16 #2 same process", "bf16", False),
                          ("fp32", "fp32", False), ("fp32 + TF32", "fp32", True), ("bf16 #3", "bf16", False)):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    r = g.one_trial(prepared, prec, 0, True)
    print(f"{name:24s} epoch1 {r['first_epoch_s']:6.2f}s later {r['later_epoch_s']:5.2f}s "
          f"{r['samples_per_s']:6.0f}/s F1 {r['eval_f1']:.4f}", flush=True)
shutil.rmtree(prepared[2], ignore_errors=True)

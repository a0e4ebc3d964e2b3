"""pneumo-ray: pneumonia detection study engine.

Layers (each folder's __init__ states what it may import; tests/test_layers.py checks it):
    config/       frozen dataclasses: training, sweep, arms, search space — imports nothing of the package
    storage/      atomic writes, Parquet results and run.json — config only
    data/         sources → manifest → split → decoded cache → study data; leakage audit — no model code
    analysis/     metrics, statistics, ablation verdicts — numpy/scipy/pandas, no torch
    train/        models, augmentation, the loop, pretrain → finetune — plain PyTorch, never Ray
    distributed/  Ray Train jobs, Tune trials, the sweep and ablation drivers — the only folder that imports Ray
    report/       figures, tables and report.html from results — never Ray
    deploy/       offline bundles (wheelhouse, data) in checked parts — standard library only
"""

__version__ = "0.1.0"

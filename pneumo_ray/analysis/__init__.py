"""Analysis: metrics, statistics and the ablation verdicts on numbers and arrays. May import: config.
numpy/scipy/pandas/scikit-learn only: no torch, no Ray, no data/ or train/."""

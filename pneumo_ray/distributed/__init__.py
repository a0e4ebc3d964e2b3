"""The Ray layer: Ray Train jobs around the unchanged training protocol, Tune trials (Optuna + ASHA),
the sweep and ablation drivers. May import: every layer but report/ and deploy/. The only folder that imports Ray."""

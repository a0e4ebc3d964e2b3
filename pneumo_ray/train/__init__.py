"""Training: models, augmentation, checkpoints, the train/evaluate loop and the pretrain → finetune
protocol, in plain PyTorch. May import: config, storage, data, analysis. Never Ray."""

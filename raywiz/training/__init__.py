"""Training engines and what every training stage needs: DeepSpeed ZeRO / FSDP2 behind one
`TrainEngine`, checkpoints with exact resume, HF and adapter export, kernels, metric loggers and the
progress line. A library: `train` (SFT) and `rl` (GRPO) both run on it; it imports no stage."""

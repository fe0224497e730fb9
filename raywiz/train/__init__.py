"""Train stage: Ray Train TorchTrainer + DeepSpeed ZeRO-3."""

"""Per-step throughput numbers: useful tokens/s, MFU, data-wait fraction.

MFU follows PaLM's definition: model FLOPs (6 x parameters per token, plus causal attention,
6 x layers x width x sum of squared sample lengths) over the card's peak dense bf16 FLOP/s.
Padding tokens are not "useful" and are not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Peak dense bf16 FLOP/s per device (vendor datasheets); MFU is None where unknown (e.g. CPU).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
              "B200": 2250e12}


def peak_flops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def model_shape(config) -> tuple[int, int]:
    """(layers, hidden width) of a transformers config, whatever its naming."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return int(layers), int(width)


def step_flops(n_params: int, n_tokens: int, sum_sq_len: int, layers: int, width: int) -> float:
    return 6.0 * n_params * n_tokens + 6.0 * layers * width * sum_sq_len


@dataclass
class StepTimer:
    """Splits wall time into waiting for data and computing."""

    data_wait: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def waiting(self):
        timer = self

        class _Wait:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.data_wait += time.perf_counter() - self.t

        return _Wait()

    def finish(self) -> tuple[float, float]:
        """(elapsed seconds, data-wait fraction) since start; resets."""
        now = time.perf_counter()
        elapsed = now - self.started
        frac = self.data_wait / elapsed if elapsed > 0 else 0.0
        self.started, self.data_wait = now, 0.0
        return elapsed, frac

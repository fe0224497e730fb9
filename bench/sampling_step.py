"""What sampling costs inside a decode step: the sampler alone, and whole steps greedy vs sampled.

    python bench/sampling_step.py                 # one GPU: StarCoderBase-1B shape, 256 lanes
    python bench/sampling_step.py --tiny          # CPU smoke run

Part 1, the sampler alone on [lanes, vocab] bf16 logits, each variant captured in a CUDA graph and
replayed (as the decoder runs it): argmax (greedy), raywiz's sampler without top-p (`nucleus=False`),
with top-p (its sort), and the Gumbel-max sampler it replaced (kept here as `gumbel_reference`: a hash
per vocabulary entry, then the sort, scatter and argmax). Part 2, whole decode steps of a SlotDecoder
with every lane busy (temperature 0.8, top_p 0.95 lanes), per mode: greedy, sample, nucleus.
Writes bench/results/sampling_step.json (milliseconds per call / step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gumbel_reference(logits, greedy, temperature, top_p, key, count):
    """The sampler raywiz used before (Gumbel-max with hashed noise per vocabulary entry)."""
    import torch

    from raywiz.inference.seeded_sampling import mix32_tensor

    logits = logits.float()
    best = logits.argmax(dim=-1)
    scaled = logits / temperature.clamp(min=1e-5)[:, None]
    probs = scaled.softmax(dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop_sorted = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p[:, None]
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    scaled = scaled.masked_fill(drop, float("-inf"))
    step_keys = mix32_tensor(mix32_tensor(key) ^ count)
    vocab = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.int64)
    bits = mix32_tensor(step_keys[:, None] ^ vocab[None, :])
    uniform = ((bits >> 8).float() + 0.5) / float(1 << 24)
    sampled = (scaled - torch.log(-torch.log(uniform))).argmax(dim=-1)
    return torch.where(greedy, best, sampled)


def timed_ms(fn, iters: int) -> float:
    """Milliseconds per call: captured in a CUDA graph and replayed on GPU, plain calls on CPU."""
    import torch

    if not torch.cuda.is_available():
        fn()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) * 1000 / iters
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000 / iters


def sampler_alone(lanes: int, vocab: int, device: str, dtype, iters: int) -> dict:
    import torch

    from raywiz.inference.slot_decoding import sample_tokens

    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(lanes, vocab, generator=gen) * 3).to(device=device, dtype=dtype)
    greedy = torch.zeros(lanes, dtype=torch.bool, device=device)
    temperature = torch.full((lanes,), 0.8, device=device)
    top_p = torch.full((lanes,), 0.95, device=device)
    key = torch.arange(lanes, device=device) * 7919
    count = torch.zeros(lanes, dtype=torch.long, device=device)
    args = (logits, greedy, temperature, top_p, key, count)
    return {
        "argmax_ms": round(timed_ms(lambda: logits.argmax(dim=-1), iters), 4),
        "sample_no_top_p_ms": round(timed_ms(lambda: sample_tokens(*args, nucleus=False), iters), 4),
        "sample_top_p_ms": round(timed_ms(lambda: sample_tokens(*args, nucleus=True), iters), 4),
        "gumbel_reference_ms": round(timed_ms(lambda: gumbel_reference(*args), iters), 4),
    }


def decode_steps(model_name: str, lanes: int, lane_len: int, prompt_len: int, device: str, dtype, iters: int) -> dict:
    import torch

    from raywiz.inference.slot_decoding import LaneSampling, SlotDecoder
    from raywiz.modeling import build_model

    with torch.device(device):
        model = build_model(model_name, dtype=dtype, seed=0)
    model.eval()
    decoder = SlotDecoder(model, lanes, lane_len)
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    for start in range(0, lanes, 32):
        entries = [(lane, torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(),
                    LaneSampling(False, 0.8, 0.95, lane)) for lane in range(start, min(lanes, start + 32))]
        decoder.prefill(entries)
    out = {}
    for mode, sampled, nucleus in (("greedy", False, True), ("sample", True, False), ("nucleus", True, True)):
        for _ in range(3):  # captures this mode's graph, warms up
            decoder.step(sampled=sampled, nucleus=nucleus)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            decoder.launch(sampled=sampled, nucleus=nucleus)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{mode}_step_ms"] = round((time.perf_counter() - t) * 1000 / iters, 4)
    out["window_steps"] = dict(decoder.stats["window_steps"])
    out["graphs"] = decoder.stats["graphs"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="starcoderbase-1b-shape")
    ap.add_argument("--lanes", type=int, default=256)
    ap.add_argument("--lane-len", type=int, default=1152)
    ap.add_argument("--prompt-len", type=int, default=224)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny-gpt-bigcode, 8 lanes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    if args.tiny:
        args.model, args.lanes, args.lane_len, args.prompt_len, args.iters = "tiny-gpt-bigcode", 8, 128, 16, 5
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    from raywiz.modeling import build_model

    vocab = build_model(args.model, dtype=dtype, seed=0).config.vocab_size if args.tiny else 49152
    report = {"card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "model": args.model,
              "lanes": args.lanes, "vocab": vocab, "dtype": str(dtype).replace("torch.", ""),
              "torch": torch.__version__}
    report["sampler_alone"] = sampler_alone(args.lanes, vocab, device, dtype, args.iters)
    print(json.dumps(report["sampler_alone"]), flush=True)
    report["decode_step"] = dict(decode_steps(args.model, args.lanes, args.lane_len, args.prompt_len, device, dtype,
                                              args.iters), lane_len=args.lane_len, prompt_len=args.prompt_len)
    out = args.out or (os.path.join("/tmp", "sampling_step.tiny.json") if args.tiny else
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sampling_step.json"))
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

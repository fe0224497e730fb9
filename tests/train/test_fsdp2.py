"""FSDP2 engine parts without Ray: 2 real processes on gloo (torch.multiprocessing), tiny model, LoRA.

Only the adapter trains; a DCP save then load into a fresh engine restores every shard of the model and
of the optimizer state bit for bit; the gathered state dict exports an adapter that peft loads, equal to
the trained model. (Full fine-tuning, resume after a kill and the equality with DeepSpeed's export run on
a Ray cluster in test_fsdp2_e2e.py.)
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _rank(rank: int, world: int, port: int, tmp: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from raywiz.config import parse_job
    from raywiz.artifacts import CheckpointDir, ModelInfo
    from raywiz.training.adapters import export_adapter
    from raywiz.training.engine import create_engine

    job = parse_job({"name": "t", "model": {"name_or_path": "tiny-gpt-bigcode"}, "train": {
        "engine": "fsdp2", "data": {}, "scaling": {"num_workers": world}, "peft": {"method": "lora", "r": 4, "dropout": 0.0},
        "optim": {"global_batch_size": 2 * world, "micro_batch_size": 1, "lr": 1e-2}}})
    eng = create_engine(job.model, job.train, False, torch.device("cpu"))
    before = {n: _local(p).clone() for n, p in eng.model.named_parameters()}
    torch.manual_seed(rank)  # each rank its own data
    ids = torch.randint(0, 500, (1, 24))
    for _ in range(3 * job.train.grad_accum_steps):
        eng.driver.backward(eng.driver(input_ids=ids, labels=ids, use_cache=False).loss)
        eng.driver.step()
    moved = {n for n, p in eng.model.named_parameters() if not torch.equal(_local(p), before[n])}
    assert moved and all("lora_" in n for n in moved), sorted(moved)[:5]

    ckpt = CheckpointDir(os.path.join(tmp, "ckpt"))
    eng.save(ckpt, adapter_only=True)  # all ranks write into one directory here (a shared filesystem)
    assert os.path.isfile(os.path.join(ckpt.fsdp2, ".metadata"))  # DCP's files, in the checkpoint's fsdp2/
    fresh = create_engine(job.model, job.train, False, torch.device("cpu"))
    fresh.load(ckpt, adapter_only=True)
    for (n, a), b in zip(eng.model.named_parameters(), fresh.model.parameters()):
        assert torch.equal(_local(a), _local(b)), n
    s1, s2 = eng.driver.optimizer.state_dict()["state"], fresh.driver.optimizer.state_dict()["state"]
    assert s1.keys() == s2.keys() and s1
    for k in s1:
        assert all(torch.equal(_local(s1[k][f]), _local(s2[k][f])) for f in s1[k]), k

    sd = eng.full_state_dict()
    eng.model.eval()  # no dropout in the reference logits
    with torch.no_grad():
        logits = eng.driver(input_ids=torch.arange(7)[None], use_cache=False).logits
    if rank == 0:
        export_adapter(eng.model, sd, os.path.join(tmp, "adapter"), ModelInfo(step=3))
        torch.save(logits, os.path.join(tmp, "logits.pt"))
    dist.destroy_process_group()


def test_lora_under_fsdp2_trains_the_adapter_resumes_exactly_and_exports_it(tmp_path):
    from peft import PeftModel

    from raywiz.modeling import build_model

    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    adapter = tmp_path / "adapter"
    assert set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == {"c_attn", "c_proj", "c_fc"}
    model = PeftModel.from_pretrained(build_model("tiny-gpt-bigcode", dtype=torch.float32, seed=42), adapter).eval()
    with torch.no_grad():
        got = model(input_ids=torch.arange(7)[None]).logits
    torch.testing.assert_close(got, torch.load(tmp_path / "logits.pt"), atol=1e-5, rtol=1e-5)

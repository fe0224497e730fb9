"""LoRA and QLoRA end to end on a real local Ray cluster: 2 CPU workers, a base model loaded from a
directory as a hub model would be.

LoRA under DeepSpeed ZeRO-3 (partitioned weights): the loss falls, only the adapter trains, the model
learns its response (greedy decoding gives it back token for token), the checkpoint's adapter/
(peft's format) on its base equals the merged hf/ export, and a SIGKILLed run resumes to the same
adapter as an uninterrupted one. QLoRA (bitsandbytes' 4-bit base, which also runs on CPU) under
ZeRO-2: it trains, survives a killed worker, and its merged hf/ is the adapter folded into the
base's original (unquantized) weights."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from raywiz.artifacts import Kind, RunLayout, check_manifest
from tests.train.test_train_e2e import (_finish, _kill_job_and_rerun, _kill_worker, _read_trace, _start,
                                        await_side_job, running_jobs)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS, CKPT_EVERY = 24, 6
QLORA_STEPS = 3 * CKPT_EVERY
# One short response, twice (one row per worker and step): what the adapter must learn to say.
INSTRUCTION, RESPONSE = "Write a Python function that reverses a string.", "def reverse(s):\n    return s[::-1]"


def _lora_job(tmp: Path, name: str, method: str = "lora", steps: int = STEPS, pid_files: bool = False,
              extra: str = "") -> Path:
    from raywiz.modeling import build_model

    base = tmp / "base"
    if not base.exists():
        build_model("tiny-gpt-bigcode", seed=3).save_pretrained(base)
        rows = [{"sample_id": f"reverse-{i}", "instruction": INSTRUCTION, "input": "", "output": RESPONSE} for i in "ab"]
        (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = tmp / f"{name}.yaml"
    job.write_text(f"""
name: {name}
storage: {tmp / 'runs'}
model: {{name_or_path: {base}, tokenizer: {REPO / 'raywiz/assets/tokenizer'}}}
train:
  data: {{paths: [{tmp / 'rows.jsonl'}], max_length: 256, pack: false}}
  optim: {{epochs: {steps}, global_batch_size: 2, micro_batch_size: 1, lr: 1.0e-2, warmup_steps: 2}}
  scaling: {{num_workers: 2}}
  deepspeed: {{resident_params: never}}
  checkpoint: {{every_n_steps: {CKPT_EVERY}, num_to_keep: 2}}
  debug: {{trace_samples: true, pid_files: {str(pid_files).lower()}}}
  peft: {{method: {method}, r: 8, alpha: 32, dropout: 0.0}}
{extra}""")
    return job


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The module's three jobs, side by side (each its own local cluster; on 2 cores much of a job is
    start-up waits, so together they take far less than one after another): the reference LoRA run, the
    same job SIGKILLed after its first checkpoint and run again, and a QLoRA job one of whose workers is
    SIGKILLed. Each fault fires in its own thread when its job gets there."""
    tmp = tmp_path_factory.mktemp("lora")
    jobs = {"lora": _lora_job(tmp, "lora"), "killed": _lora_job(tmp, "killed")}
    if importlib.util.find_spec("bitsandbytes") is not None:  # else the QLoRA test skips
        jobs["qlora"] = _lora_job(tmp, "qlora", method="qlora", steps=QLORA_STEPS, pid_files=True,
                                  extra="  max_failures: 1\n")
    layouts = {name: RunLayout(str(tmp / "runs" / name)) for name in jobs}
    logs = {name: tmp / f"{name}.log" for name in jobs}
    procs = {name: _start(job, logs[name]) for name, job in jobs.items()}
    with ThreadPoolExecutor() as pool, running_jobs(procs):  # on a failure: the jobs die, then the threads end
        logs["killed"] = tmp / "killed2.log"
        side = {"killed": pool.submit(_killed_and_rerun, procs, jobs["killed"], Path(layouts["killed"].train),
                                      logs["killed"])}
        if "qlora" in jobs:
            side["qlora"] = pool.submit(_worker_killed, procs["qlora"], Path(layouts["qlora"].train), logs["qlora"])
        stdout = _finish(procs["lora"], logs["lora"])
        for future in side.values():
            await_side_job(future)
    return {"tmp": tmp, "stdout": stdout, "layout": layouts["lora"], "layouts": layouts, "side": side}


def _killed_and_rerun(procs: dict, job: Path, train_dir: Path, log: Path) -> dict:
    killed_at = _kill_job_and_rerun(procs, "killed", job, train_dir, CKPT_EVERY, log)
    return {"killed_at": killed_at, "text": _finish(procs["killed"], log) + log.read_text()}


def _worker_killed(proc, train_dir: Path, log: Path) -> dict:
    _kill_worker(proc, train_dir, CKPT_EVERY)
    return {"text": _finish(proc, log) + log.read_text()}


def _adapter(layout: RunLayout) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(layout.latest_checkpoint().adapter, "adapter_model.safetensors"))


def test_lora_under_zero3_trains_the_adapter_and_exports_it_loadable(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    layout, base = lora_run["layout"], lora_run["tmp"] / "base"
    ckpt = layout.latest_checkpoint()
    assert ckpt.step == STEPS and lora_run["stdout"].strip().splitlines()[-1] == ckpt.hf
    losses = [json.loads(line)["loss"] for line in open(layout.metrics)]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4  # each step sees other samples: compare means
    assert len(losses) == STEPS and last < first - 0.05, losses  # deterministic (CPU, fp32, seeded): 7.52 -> 7.43

    assert check_manifest(ckpt.adapter, kind=Kind.ADAPTER_EXPORT).complete
    assert check_manifest(ckpt.hf, kind=Kind.HF_EXPORT).complete
    config = json.loads(Path(ckpt.adapter, "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and set(config["target_modules"]) == {"c_attn", "c_proj", "c_fc"}
    ids = torch.tensor([[5, 17, 99, 3, 250, 7, 40]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(ckpt.hf).eval()(ids).logits
        on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ckpt.adapter).eval()(ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(base).eval()(ids).logits
    torch.testing.assert_close(on_base, merged, rtol=1e-4, atol=1e-4)
    assert (merged - untouched).abs().max() > 1e-3  # the adapter learned something
    prompt, response = _prompt_and_response(ckpt.hf)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(ckpt.hf).eval()
        said = model.generate(torch.tensor([prompt]), max_new_tokens=len(response), do_sample=False,
                              pad_token_id=1)[0, len(prompt):].tolist()
    assert said == response, "greedy decoding did not give back the trained response"


def _prompt_and_response(model_dir: str) -> tuple[list[int], list[int]]:
    """The training tokenization of the one sample: prompt ids, and the response ids (+ EOS) it learns."""
    from transformers import AutoTokenizer

    from raywiz.data.conversation import from_instruction, tokenize_conversation

    sample = tokenize_conversation(AutoTokenizer.from_pretrained(model_dir), from_instruction(INSTRUCTION, "", RESPONSE))
    n_prompt = next(i for i, label in enumerate(sample.labels) if label != -100)
    return list(sample.input_ids[:n_prompt]), list(sample.input_ids[n_prompt:])


def test_a_killed_lora_run_resumes_to_the_same_adapter(lora_run):
    killed = lora_run["side"]["killed"].result()  # the job's own failure, if it failed, fails here
    layout, last, text = lora_run["layouts"]["killed"], killed["killed_at"], killed["text"]
    assert CKPT_EVERY <= last < STEPS
    # Never older than what the controller had registered when the job died; newer happens on a loaded
    # machine (a checkpoint being registered at the kill still lands).
    resumed = re.search(r"resumed from step (\d+) ", text)
    assert resumed and last <= int(resumed[1]) < STEPS, text[-3000:]
    assert _read_trace(Path(layout.train)) == _read_trace(Path(lora_run["layout"].train)), "a sample was skipped or repeated"
    ref, resumed = _adapter(lora_run["layout"]), _adapter(layout)
    assert ref.keys() == resumed.keys() and all(torch.allclose(ref[k], resumed[k], atol=1e-5) for k in ref)
    steps = [json.loads(line)["step"] for line in open(layout.metrics)]
    assert steps == list(range(1, STEPS + 1))  # a true history: no step twice after the resume


def test_qlora_trains_on_a_4bit_base_survives_a_killed_worker_and_merges_into_the_original(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if "qlora" not in lora_run["side"]:
        pytest.skip("bitsandbytes is not installed")
    text = lora_run["side"]["qlora"].result()["text"]  # the job's own failure, if it failed, fails here
    tmp, steps, layout = lora_run["tmp"], QLORA_STEPS, lora_run["layouts"]["qlora"]
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+) ", text)]
    assert resumed and resumed[0] in (CKPT_EVERY, 2 * CKPT_EVERY), text[-3000:]
    assert sorted(_read_trace(Path(layout.train))) == list(range(steps))
    assert [json.loads(line)["step"] for line in open(layout.metrics)] == list(range(1, steps + 1))
    losses = [json.loads(line)["loss"] for line in open(layout.metrics)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses

    ckpt, base = layout.latest_checkpoint(), tmp / "base"
    meta = json.loads(Path(ckpt.adapter, "raywiz.json").read_text())
    assert meta["peft"] == "qlora" and meta["base_quantized"] is True  # read off the trained model itself
    assert check_manifest(ckpt.adapter, kind=Kind.ADAPTER_EXPORT).complete
    ids = torch.tensor([[5, 17, 99, 3, 250, 7, 40]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(ckpt.hf).eval()(ids).logits
        on_original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ckpt.adapter).eval()(ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(base).eval()(ids).logits
    torch.testing.assert_close(merged, on_original, rtol=1e-4, atol=1e-4)  # folded into the 16/32-bit base
    assert (merged - untouched).abs().max() > 1e-3

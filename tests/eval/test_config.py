import pytest

from raywiz.config import ConfigError, parse_job


def test_defaults_are_wizardcoders():
    job = parse_job({"name": "x", "eval": {}})
    cfg = job.eval
    assert cfg.benchmarks == ["humaneval", "humaneval+"]
    assert cfg.generation.greedy and cfg.generation.max_tokens == 512
    assert cfg.prompt.style == "wizardcoder" and cfg.postprocess == "wizardcoder"
    settings = cfg.score_settings()
    assert settings.humaneval_timeout_s == 3.0 and settings.gt_time_limit_factor == 4.0


def test_aliases_normalised_and_errors_name_the_field():
    job = parse_job({"name": "x", "eval": {"benchmarks": ["HumanEvalPlus", "mbpp"], "data": {"MBPP": "/d.jsonl"}}})
    assert job.eval.benchmarks == ["humaneval+", "mbpp"] and job.eval.data == {"mbpp": "/d.jsonl"}
    with pytest.raises(ConfigError, match="eval.benchmarks"):
        parse_job({"name": "x", "eval": {"benchmarks": ["apps"]}})
    with pytest.raises(ConfigError, match="eval.generation"):
        parse_job({"name": "x", "eval": {"generation": {"backend": "openai"}}})
    with pytest.raises(ConfigError, match="eval.prompt"):
        parse_job({"name": "x", "eval": {"prompt": {"style": "custom"}}})
    with pytest.raises(ConfigError, match="eval.sandbox.memroy_mb"):
        parse_job({"name": "x", "eval": {"sandbox": {"memroy_mb": 1}}})


def test_paths_resolve_relative_to_the_job_file(tmp_path):
    from raywiz.config import load_job

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.jsonl").write_text("")
    (tmp_path / "job.yaml").write_text("name: j\neval:\n  data: {mbpp: ./data/m.jsonl}\n  checkpoints: [latest, ./ckpt]\n")
    job = load_job(tmp_path / "job.yaml")
    assert job.eval.data["mbpp"] == str(tmp_path / "data" / "m.jsonl")
    assert job.eval.checkpoints == ["latest", str(tmp_path / "ckpt")]

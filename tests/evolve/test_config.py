import pytest

from raywiz.config import ConfigError, load_job, parse_job


def _job(**evolve):
    return {"name": "t", "evolve": {"seeds": {"paths": ["seeds.jsonl"]}, **evolve}}


def test_defaults_follow_wizardcoder():
    cfg = parse_job(_job()).evolve
    assert cfg.rounds == 3 and len(cfg.methods) == 5 and cfg.keep_seeds
    assert cfg.llm.api_key_env == "OPENAI_API_KEY"


def test_bad_fields_name_their_path():
    with pytest.raises(ConfigError, match=r"evolve\.llm\.concurrency"):
        parse_job(_job(llm={"concurrency": 0}))
    with pytest.raises(ConfigError, match="unknown"):
        parse_job(_job(methods=["make_it_harder"]))
    with pytest.raises(ConfigError, match=r"evolve\.seeds"):
        parse_job({"name": "t", "evolve": {"seeds": {}}})
    with pytest.raises(ConfigError, match="bands"):
        parse_job(_job(dedup={"num_perm": 100, "bands": 16}))


def test_content_hash_ignores_speed_knobs_only():
    base = parse_job(_job()).evolve.content_hash()
    assert parse_job(_job(llm={"concurrency": 8, "requests_per_minute": 60})).evolve.content_hash() == base
    assert parse_job(_job(rounds=2)).evolve.content_hash() != base
    assert parse_job(_job(llm={"model": "other"})).evolve.content_hash() != base


def test_paths_resolve_relative_to_the_job_file(tmp_path):
    (tmp_path / "seeds.jsonl").write_text("{}\n")
    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: t\nevolve:\n  seeds: {paths: [seeds.jsonl]}\n  cache_dir: ./cache\n")
    cfg = load_job(job_file).evolve
    assert cfg.seeds.paths == [str(tmp_path / "seeds.jsonl")]
    assert cfg.cache_dir == str(tmp_path / "cache")


def test_shipped_openai_job_is_valid():
    from pathlib import Path

    job = load_job(Path(__file__).parents[2] / "jobs" / "evolve-openai.yaml")
    llm = job.evolve.llm
    assert llm.backend == "openai" and llm.model and llm.base_url.startswith("https://")
    assert llm.api_key_env == "OPENAI_API_KEY" and job.train is None


def test_cli_names_a_missing_section(tmp_path, capsys):
    from raywiz.cli import main

    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: t\n")
    assert main(["evolve", str(job_file)]) == 2
    assert "no 'evolve:' section" in capsys.readouterr().err
    assert main(["evolve", str(tmp_path / "missing.yaml")]) == 2


def test_verify_asks_within_the_response_limits_unless_told_otherwise():
    ev = parse_job(_job(response_params={"max_tokens": 256, "stop": ["###"]})).evolve
    assert (ev.verify.answer_params.max_tokens, ev.verify.answer_params.temperature) == (256, 0.8)
    assert (ev.verify.tests_params.max_tokens, ev.verify.tests_params.stop) == (256, ["###"])
    assert ev.verify.tests_params.temperature == 0.0
    own = parse_job(_job(response_params={"max_tokens": 256}, verify={"answer_params": {"max_tokens": 64}})).evolve
    assert own.verify.answer_params.max_tokens == 64

"""raywiz.jobs: runtime env, auth, entrypoints; `raywiz submit|status|logs|stop` on a real 2-node cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raywiz import jobs
from raywiz.artifacts import check_manifest
from raywiz.cli import main
from raywiz.config import ConfigError, parse_job

from .ray_cluster import LocalRayCluster

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).parent / "jobs"


# ---------------------------------------------------------------- runtime env, entrypoint, auth


def write_env(tmp_path, data) -> Path:
    path = tmp_path / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_runtime_env_passes_secrets_by_name_only(tmp_path):
    path = write_env(tmp_path, {"working_dir": "code", "env_vars": {"TOKENIZERS_PARALLELISM": False},
                                "pass_env": ["WANDB_API_KEY", "HF_TOKEN"]})
    env, passed = jobs.load_runtime_env(path, environ={"WANDB_API_KEY": "wb-secret", "OTHER": "x"})
    assert passed == ["WANDB_API_KEY"]  # HF_TOKEN is not set here: skipped
    assert env["env_vars"] == {"TOKENIZERS_PARALLELISM": "False", "WANDB_API_KEY": "wb-secret"}
    assert env["working_dir"] == str(tmp_path / "code") and "pass_env" not in env
    assert "wb-secret" not in path.read_text()


def test_runtime_env_refuses_literal_secrets_and_bad_shapes(tmp_path):
    with pytest.raises(ConfigError, match=r"runtime_env.yaml: env_vars.WANDB_API_KEY: do not write secrets"):
        jobs.load_runtime_env(write_env(tmp_path, {"env_vars": {"WANDB_API_KEY": "abc"}}), environ={})
    with pytest.raises(ConfigError, match="pass_env must be a list"):
        jobs.load_runtime_env(write_env(tmp_path, {"pass_env": "WANDB_API_KEY"}), environ={})
    with pytest.raises(ConfigError, match="not found"):
        jobs.load_runtime_env(tmp_path / "missing.yaml")


def test_repo_runtime_env_is_valid_and_ships_the_repo():
    env, _ = jobs.load_runtime_env(REPO / "runtime_env.yaml", environ={})
    assert env["working_dir"] == str(REPO)
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the fields


def test_entrypoint_names_the_job_file_inside_the_working_dir(tmp_path):
    env = {"working_dir": str(REPO)}
    assert jobs.entrypoint_job_path(str(JOBS / "noop.yaml"), env) == "tests/ops/jobs/noop.yaml"
    with pytest.raises(ConfigError, match="outside working_dir"):
        jobs.entrypoint_job_path(str(tmp_path / "job.yaml"), env)
    assert jobs.entrypoint_job_path("/in/image/job.yaml", {}) == "/in/image/job.yaml"
    cmd = jobs.build_entrypoint("run", "jobs/x.yaml", ["train.optim.lr=1e-5", "name=a b"], ["--skip", "evolve"])
    assert cmd == "python -m raywiz.cli run jobs/x.yaml --set train.optim.lr=1e-5 --set 'name=a b' --skip evolve"
    from raywiz.cli import build_parser

    args = build_parser().parse_args(["submit", "jobs/x.yaml", "--set", "a=1", "--command-args", "--skip evolve"])
    assert (args.job, args.overrides, args.command_args) == ("jobs/x.yaml", ["a=1"], "--skip evolve")


def test_auth_token_lookup_follows_ray(tmp_path):
    home_token = tmp_path / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("from-home\n")
    (tmp_path / "tok").write_text("from-path")
    env = {"HOME": str(tmp_path / "home")}
    os_home = os.environ.get("HOME")
    os.environ["HOME"] = env["HOME"]
    try:
        assert jobs.ray_auth_token({}) == "from-home"
        assert jobs.ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}) == "from-path"
        assert jobs.ray_auth_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}) == "from-env"
        assert jobs.ray_auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}) is None
        home_token.unlink()
        assert jobs.ray_auth_token({}) is None
    finally:
        os.environ["HOME"] = os_home


def test_storage_warning_for_relative_paths(tmp_path):
    assert "relative path" in jobs.storage_warning(str(JOBS / "noop.yaml"), [])
    assert jobs.storage_warning(str(JOBS / "noop.yaml"), ["storage=s3://bucket/runs"]) is None
    assert jobs.storage_warning(str(JOBS / "noop.yaml"), [f"storage={tmp_path}"]) is None


def test_train_bundles_match_ray_trains_scaling_config():
    from ray.train import ScalingConfig

    job = parse_job({"name": "b", "train": {"data": {}, "optim": {"global_batch_size": 8, "micro_batch_size": 1},
                                            "scaling": {"num_workers": 8, "cpus_per_worker": 4,
                                                        "accelerator_type": "H100"}}})
    bundles = jobs.train_bundles(job)
    ray_view = ScalingConfig(num_workers=8, use_gpu=True, resources_per_worker={"CPU": 4},
                             accelerator_type="H100")._resources_per_worker_not_none
    assert bundles == [ray_view] * 8
    job.train.scaling.use_gpu = False
    job.train.scaling.accelerator_type = None
    assert jobs.train_bundles(job) == [{"CPU": 4.0}] * 8


# ---------------------------------------------------------------- a real multi-node cluster


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + one worker node (2 CPUs), each with its own custom resource; token auth on.
    The quickstart's 2 train workers fit on the worker node; Ray Data's tasks use the head's CPU."""
    c = LocalRayCluster(head={"num_cpus": 1, "resources": {"raywiz_head": 1}},
                        workers=[{"num_cpus": 2, "resources": {"raywiz_worker": 1}}])
    with c:
        yield c


def client_env(cluster, tmp_path, token: bool = True, **extra) -> dict:
    """The submitting shell: the cluster's token in ~/.ray/auth_token, RAY_AUTH_MODE unset (Ray's own
    client would then send no token: the NOTES.md pitfall)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    if token:
        (home / ".ray" / "auth_token").write_text(cluster.token)
    env.update({"HOME": str(home), "PYTHONPATH": str(REPO), **extra})
    return env


def raywiz(args, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raywiz.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def repo_runtime_env(tmp_path) -> Path:
    return write_env(tmp_path, {"working_dir": str(REPO), "excludes": [".git", ".venv", ".devpack", "runs", "wandb"],
                                "env_vars": {"RAYWIZ_TEST": "1"}, "pass_env": ["WANDB_API_KEY"]})


# The quickstart as the README runs it (`raywiz run`), made smaller: 16 of its 64 seeds, 2 of its
# train steps; evolve's round, train's export and eval's 3 HumanEval tasks are as shipped.
QUICKSTART_SMALLER = ["evolve.seeds.limit=16", "train.optim.max_steps=2"]


@pytest.mark.slow
def test_submit_quickstart_follows_logs_and_succeeds(cluster, tmp_path, capsys, monkeypatch):
    env = client_env(cluster, tmp_path, WANDB_API_KEY="wb-not-printed-123")
    storage = tmp_path / "shared"  # every node of this one-machine cluster sees it, like a shared volume
    sets = [arg for o in [f"storage={storage}", *QUICKSTART_SMALLER] for arg in ("--set", o)]
    r = raywiz(["submit", str(REPO / "jobs" / "quickstart.yaml"), "--address", cluster.dashboard_url,
                "--runtime-env", str(repo_runtime_env(tmp_path)), *sets], env, timeout=600)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("quickstart-")
    assert "raywiz: train step 2/2" in r.stdout  # the job's own output, streamed back
    assert "SUCCEEDED" in r.stderr and "passed from this environment: WANDB_API_KEY" in r.stderr
    assert "wb-not-printed-123" not in r.stdout + r.stderr
    run_dir = storage / "quickstart"

    # evolve: the tiny random model's evolutions are junk and eliminated; the seeds (which come with
    # answers) are kept as round 0 and are what train reads. A round that keeps nothing is no failure.
    evolved = check_manifest(str(run_dir / "evolve"), kind="instruction_shards")
    assert evolved.complete, evolved.reason
    meta = evolved.manifest["meta"]
    assert meta["rounds"] == 1 and set(meta["kept_by_round"]) == {"0", "1"}
    assert 0 < meta["kept_by_round"]["0"] <= 16 and meta["rows"] == sum(meta["kept_by_round"].values())
    assert "round-00-00000.parquet" in evolved.manifest["files"]
    report = json.loads((run_dir / "evolve_report" / "report.json").read_text())
    assert report["backend"] == "transformers" and report["llm"]["sent"] >= meta["kept_by_round"]["0"]  # each seed evolved

    # train: on this run's evolve output (every kept row), 2 steps, a sealed HF export.
    hf = run_dir / "train" / "checkpoint_00000002" / "hf"
    assert check_manifest(str(hf), kind="hf_export").complete
    data_report = json.loads((run_dir / "train" / "data_report.json").read_text())
    assert data_report["n_rows"] == meta["rows"]
    assert data_report["files"] and all(f.startswith(str(run_dir / "evolve")) for f in data_report["files"])

    # eval: the first 3 HumanEval tasks, generated by that export and scored in the sandbox.
    bench_dir = run_dir / "eval" / "checkpoint_00000002" / "humaneval"
    assert check_manifest(str(bench_dir), kind="eval_results").complete
    summary = json.loads((bench_dir / "summary.json").read_text())
    assert summary["n_tasks"] == 3 and set(summary["per_task"]) == {f"HumanEval/{i}" for i in range(3)}
    assert len((bench_dir / "results.jsonl").read_text().splitlines()) == 3

    state = json.loads((run_dir / "pipeline.json").read_text())
    assert set(state["stages"]) == {"evolve", "train", "eval"}
    assert state["stages"]["evolve"]["output"] == str(run_dir / "evolve")
    assert state["stages"]["train"]["output"] == str(hf)
    [eval_out] = state["stages"]["eval"]["output"]
    assert eval_out["model"] == str(hf) and eval_out["pass@1"]["humaneval"] == summary["pass@1"]

    # The secret reached the job's runtime env (by value); the file only named it.
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers()).get_job_info(job_id)
    assert info.runtime_env["env_vars"]["WANDB_API_KEY"] == "wb-not-printed-123"
    assert info.metadata["raywiz_run"] == "quickstart"

    status = raywiz(["status", job_id, "--address", cluster.dashboard_url], env, timeout=60)
    assert status.returncode == 0 and "SUCCEEDED" in status.stderr
    logs = raywiz(["logs", job_id, "--address", cluster.dashboard_url], env, timeout=60)
    assert "raywiz: train step 2/2" in logs.stdout

    # The README's second run (`raywiz run` again, here in this process and off the cluster: no stage
    # runs, so no Ray starts): every stage resumes from its output.
    from raywiz import pipeline

    ray_starts = []
    monkeypatch.setattr(pipeline, "init_ray", lambda *a, **kw: ray_starts.append(a))
    capsys.readouterr()
    assert main(["run", str(REPO / "jobs" / "quickstart.yaml"), *sets]) == 0
    again = capsys.readouterr()
    assert ray_starts == []  # (Ray may already be up in this process from other tests: ask the pipeline)
    for stage in ("evolve", "train", "eval"):
        assert f"raywiz: {stage}: finished earlier" in again.err
    assert json.loads(again.out)["resumed"] == ["evolve", "train", "eval"]


@pytest.mark.slow
def test_failing_job_reports_failure_and_nonzero_exit(cluster, tmp_path):
    env = client_env(cluster, tmp_path)
    r = raywiz(["submit", str(JOBS / "fails.yaml"), "--address", cluster.dashboard_url,
                "--runtime-env", str(repo_runtime_env(tmp_path)), "--set", f"storage={tmp_path / 'shared'}"], env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "exit code 1" in r.stderr
    assert "/nonexistent/raywiz-test-seeds.jsonl" in r.stdout  # the job's own error, streamed back


@pytest.mark.slow
def test_no_token_gives_a_clear_error(cluster, tmp_path):
    r = raywiz(["status", "nope", "--address", cluster.dashboard_url], client_env(cluster, tmp_path, token=False),
               timeout=60)
    assert r.returncode == 2 and "auth token" in r.stderr


@pytest.mark.slow
def test_stop_ends_a_running_job(cluster, tmp_path):
    from ray.job_submission import JobSubmissionClient

    env = client_env(cluster, tmp_path)
    client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers())
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        r = raywiz(["submit", str(JOBS / "waits.yaml"), "--address", cluster.dashboard_url, "--no-follow",
                    "--runtime-env", str(repo_runtime_env(tmp_path)), "--set", f"storage={tmp_path}",
                    "--set", f"evolve.llm.base_url={url}", "--submission-id", "ops-stop-me"], env, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "ops-stop-me"
        wait_for_status(client, "ops-stop-me", {"RUNNING"}, timeout=180)
        stop = raywiz(["stop", "ops-stop-me", "--address", cluster.dashboard_url], env, timeout=60)
        assert stop.returncode == 0 and "stop requested" in stop.stderr
        assert wait_for_status(client, "ops-stop-me", jobs.TERMINAL, timeout=60) == "STOPPED"
    status = raywiz(["status", "ops-stop-me", "--address", cluster.dashboard_url], env, timeout=60)
    assert status.returncode == 1 and "STOPPED" in status.stderr


def wait_for_status(client, job_id: str, wanted: set[str], timeout: float) -> str:
    deadline = time.time() + timeout
    while (status := str(client.get_job_status(job_id))) not in wanted:
        assert status not in jobs.TERMINAL - wanted, f"{job_id} ended {status}: {client.get_job_logs(job_id)[-2000:]}"
        assert time.time() < deadline, f"{job_id} still {status} after {timeout}s"
        time.sleep(1)
    return status

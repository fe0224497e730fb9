"""Ray Jobs: `raywiz submit JOB.yaml`, `raywiz status|logs|stop JOB_ID`.

`submit` validates the job locally, packages the code with ``runtime_env.yaml`` (Ray's runtime_env
format, plus one raywiz key: ``pass_env``, a list of environment variable NAMES whose values are
read from the submitting shell at submit time and handed to the job, never printed), submits
``python -m raywiz.cli run JOB.yaml`` through Ray's ``JobSubmissionClient``, prints the job id and
follows the logs. Its exit code is the job's: 0 when it succeeded, 1 when it failed or was stopped.

Ray 2.60 turns token authentication on by default: a cluster started by ``ray start --head`` on a
machine that has ``~/.ray/auth_token`` refuses clients that do not send it, and Ray's client only
sends it when ``RAY_AUTH_MODE=token`` is set. raywiz sends the token whenever it finds one
(``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``) unless
``RAY_AUTH_MODE=disabled``, so `raywiz submit` works against both kinds of cluster.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from raywiz.config import ConfigError, apply_overrides, load_job
from raywiz.log import get_logger, say

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from raywiz.config import JobConfig

log = get_logger(__name__)
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RUNTIME_ENV_FILE = "runtime_env.yaml"
PASS_ENV_KEY = "pass_env"  # raywiz's addition to Ray's runtime_env format
STAGE_COMMANDS = ("run", "evolve", "train", "rl", "eval", "serve")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# ---------------------------------------------------------------- runtime env


def load_runtime_env(path: str | os.PathLike, environ: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    """Read runtime_env.yaml into a Ray runtime_env dict; returns (runtime_env, names passed).

    ``working_dir`` is relative to the file. ``pass_env`` names are looked up in ``environ``
    (default: this process's environment); missing ones are skipped (the cluster may provide them,
    e.g. KubeRay from a Kubernetes Secret). Literal secrets in ``env_vars`` are refused.
    """
    from raywiz.tracking import is_secret_key

    environ = os.environ if environ is None else environ
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{p}: runtime env file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a runtime env must be a YAML mapping")
    names = data.pop(PASS_ENV_KEY, None) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{p}: {PASS_ENV_KEY} must be a list of environment variable names")
    env_vars = data.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise ConfigError(f"{p}: env_vars must be a mapping of NAME: value")
    for name, value in env_vars.items():
        if is_secret_key(name) and value:
            raise ConfigError(f"{p}: env_vars.{name}: do not write secrets into this file; "
                              f"list the name under {PASS_ENV_KEY}: and export it where you submit")
    env_vars = {k: str(v) for k, v in env_vars.items()}
    passed = [n for n in names if n in environ]
    env_vars.update({n: environ[n] for n in passed})
    if env_vars:
        data["env_vars"] = env_vars
    wd = data.get("working_dir")
    if wd and "://" not in str(wd):
        data["working_dir"] = str((p.resolve().parent / os.path.expanduser(str(wd))).resolve())
    return data, passed


def entrypoint_job_path(job_path: str, runtime_env: dict) -> str:
    """The job file as the entrypoint sees it: relative to the uploaded working_dir."""
    wd = runtime_env.get("working_dir")
    if not wd or "://" in str(wd):
        return job_path  # no local working_dir: the file must exist on the cluster (e.g. in the image)
    try:
        return Path(job_path).resolve().relative_to(Path(wd)).as_posix()
    except ValueError:
        raise ConfigError(f"{job_path}: the job file is outside working_dir {wd}, so the cluster "
                          "would not see it; move it under the working dir or change runtime_env.yaml") from None


def build_entrypoint(command: str, job_path: str, overrides: list[str], extra: list[str] = ()) -> str:
    args = ["python", "-m", "raywiz.cli", command, job_path]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args + list(extra))


def storage_warning(job_path: str, overrides: list[str]) -> str | None:
    """Runs on a cluster must write to storage every node sees; a relative path would land in the
    job's temporary working directory."""
    raw = yaml.safe_load(Path(job_path).read_text()) or {}
    storage = str(apply_overrides(raw, list(overrides)).get("storage", "./runs"))
    if "://" in storage or os.path.isabs(os.path.expanduser(storage)):
        return None
    return (f"storage is {storage!r}, a relative path: on the cluster it is inside the job's temporary "
            "working directory. Use s3://, gs:// or a shared mount (e.g. --set storage=/mnt/shared/runs).")


# ---------------------------------------------------------------- client and auth


def ray_auth_token(environ: dict[str, str] | None = None) -> str | None:
    """The Ray auth token this machine has, in Ray's own lookup order; None if auth is disabled."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    path = Path(environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def resolve_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS (as `ray job submit` reads it), else the local dashboard."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def job_client(address: str | None = None) -> JobSubmissionClient:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    token = ray_auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        raise ConfigError(
            f"{address}: the cluster wants a Ray auth token and this machine has none (or another one). "
            "Copy the head node's token (`ray get-auth-token` there) into ~/.ray/auth_token, or set "
            "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH."
        ) from None
    except ConnectionError as e:
        raise ConfigError(f"{address}: cannot reach the Ray job API ({e}); is the cluster up, "
                          "and is the dashboard port forwarded (kubectl port-forward svc/...-head-svc 8265)?") from None


# ---------------------------------------------------------------- commands


def submit(job_path: str, overrides: list[str], runtime_env_path: str | None = None, address: str | None = None,
           command: str = "run", submission_id: str | None = None, follow: bool = True,
           extra: list[str] = ()) -> int:
    job = load_job(job_path, overrides)  # fail here, not minutes later on the cluster
    env_file = runtime_env_path or (RUNTIME_ENV_FILE if os.path.exists(RUNTIME_ENV_FILE) else None)
    runtime_env, passed = load_runtime_env(env_file) if env_file else ({}, [])
    entrypoint = build_entrypoint(command, entrypoint_job_path(job_path, runtime_env), overrides, extra)
    if warning := storage_warning(job_path, overrides):
        log.warning(warning)

    client = job_client(address)
    submission_id = submission_id or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        submission_id=submission_id,
        metadata={"raywiz_run": job.name, "raywiz_command": command},
    )
    # Names only: the values of passed variables are secrets.
    say(f"submitted {job_id} to {resolve_address(address)}: {entrypoint}")
    if passed:
        say(f"passed from this environment: {', '.join(passed)}")
    print(job_id, flush=True)
    if not follow:
        return 0
    return follow_job(client, job_id)


def follow_job(client: JobSubmissionClient, job_id: str, poll_s: float = 1.0) -> int:
    """Stream the job's logs until it ends; 0 if it succeeded, 1 otherwise."""
    import asyncio

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(stream())
        status = str(client.get_job_status(job_id))
        while status not in TERMINAL:  # the log stream can close a moment before the status turns
            time.sleep(poll_s)
            status = str(client.get_job_status(job_id))
    except KeyboardInterrupt:
        say(f"stopped following; the job keeps running (raywiz stop {job_id})")
        return 130
    return report_status(client, job_id)


def report_status(client: JobSubmissionClient, job_id: str) -> int:
    info = client.get_job_info(job_id)
    status = str(info.status)
    # The message's first line; on failure Ray appends the log tail, which was streamed already.
    message = (info.message or "").strip().splitlines()[:1]
    say(f"job {job_id} {status}" + (f": {message[0]}" if message else ""))
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def _status(args) -> int:
    return report_status(job_client(args.address), args.job_id)


def _logs(args) -> int:
    client = job_client(args.address)
    if args.follow:
        return follow_job(client, args.job_id)
    print(client.get_job_logs(args.job_id), end="")
    return 0


def _stop(args) -> int:
    client = job_client(args.address)
    stopped = client.stop_job(args.job_id)
    say(f"{'stop requested for' if stopped else 'nothing to stop:'} {args.job_id}")
    return 0


def _submit(args) -> int:
    return submit(args.job, args.overrides, args.runtime_env, args.address, args.command,
                  args.submission_id, follow=not args.no_follow, extra=shlex.split(args.command_args))


def register(subparsers) -> None:
    from raywiz.cli import add_job_arguments

    address_help = f"Ray dashboard / job API address (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})"
    p = subparsers.add_parser("submit", help="submit a job to a Ray cluster (Ray Jobs) and follow it")
    add_job_arguments(p)
    p.add_argument("--address", help=address_help)
    p.add_argument("--runtime-env", help=f"runtime env YAML (default: ./{RUNTIME_ENV_FILE} if present)")
    p.add_argument("--command", choices=STAGE_COMMANDS, default="run",
                   help="what the job runs: the whole pipeline (run, default) or one stage")
    p.add_argument("--submission-id", help="job id to use (default: <job name>-<time>)")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return")
    p.add_argument("--command-args", default="", metavar="ARGS",
                   help="more arguments for the command, e.g. --command-args='--skip evolve --serve'")
    p.set_defaults(handler=_submit)

    for name, handler, text in (("status", _status, "show a submitted job's status"),
                                ("logs", _logs, "print a submitted job's logs"),
                                ("stop", _stop, "stop a submitted job")):
        q = subparsers.add_parser(name, help=text)
        q.add_argument("job_id")
        q.add_argument("--address", help=address_help)
        if name == "logs":
            q.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        q.set_defaults(handler=handler)


# ---------------------------------------------------------------- resource requests


def train_bundles(job: JobConfig, use_gpu: bool = True) -> list[dict[str, float]]:
    """The resources `raywiz train` asks Ray for: one bundle per worker, read from the same
    ScalingConfig the train launcher builds (CPU per worker, 1 GPU, the accelerator type if pinned).

    This is what the autoscaler sees; KubeRay's GPU group must fit one bundle per node or more.
    """
    from raywiz.train.launch import scaling_config

    scaling = job.require("train").scaling
    use_gpu = scaling.use_gpu if scaling.use_gpu is not None else use_gpu
    bundle = scaling_config(job, use_gpu)._resources_per_worker_not_none  # Ray's own derivation
    return [{k: float(v) for k, v in bundle.items()} for _ in range(scaling.num_workers)]

"""Real multi-node Ray clusters on one machine, for tests: `ray start --head` plus `ray start --address`.

Each cluster has its own temp dir, its own free ports and its own resources, so it can run beside
other Ray clusters on the machine. Nodes run `ray start --block` in their own process group;
stopping terminates those processes, then any left in their process groups or naming this
cluster's temp dir: never a machine-wide `ray stop`, which would also kill other people's clusters.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

VENV_BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    return os.path.join(VENV_BIN, "ray")


class LocalRayCluster:
    """A head node and worker nodes, each `{"num_cpus": n, "resources": {...}}`; token auth on."""

    def __init__(self, head: dict, workers: list[dict] = (), auth: bool = True, extra_env: dict | None = None,
                 autoscaling_config: dict | None = None):
        self.head_spec, self.worker_specs = head, list(workers)
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.tmp = tempfile.mkdtemp(prefix="rw", dir="/tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        self.token = secrets.token_hex(16) if auth else None
        self.env = dict(os.environ)
        self.env.update({
            "RAY_USAGE_STATS_ENABLED": "0", "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        })
        if auth:
            token_path = Path(self.tmp) / "auth_token"
            token_path.write_text(self.token)
            self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
        else:
            self.env["RAY_AUTH_MODE"] = "disabled"
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        self.env.update(extra_env or {})
        self.autoscaling_config = autoscaling_config

    # ---------------------------------------------------------------- start

    def _node_args(self, spec: dict) -> list[str]:
        args = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={spec.get('num_cpus', 1)}",
                f"--num-gpus={spec.get('num_gpus', 0)}", f"--object-store-memory={spec.get('object_store', 100 << 20)}",
                f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
        if spec.get("resources"):
            args.append("--resources=" + json.dumps(spec["resources"]))
        return args

    def _spawn(self, args: list[str], node: str) -> subprocess.Popen:
        # Each node its own temp dir, as on separate machines: nodes sharing one would share the
        # runtime-env directories, and one node's cleanup would delete another's job working dir.
        node_tmp = os.path.join(self.tmp, node)
        os.makedirs(node_tmp, exist_ok=True)
        log = open(os.path.join(self.tmp, f"{node}.log"), "wb")
        proc = subprocess.Popen([_ray(), "start", *args, f"--temp-dir={node_tmp}"], env={**self.env, "RAY_TMPDIR": node_tmp},
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 120) -> LocalRayCluster:
        head_args = ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     *self._node_args(self.head_spec)]
        if self.autoscaling_config is not None:
            cfg = os.path.join(self.tmp, "autoscaling.json")
            with open(cfg, "w") as f:
                json.dump(self.autoscaling_config, f)
            head_args.append(f"--autoscaling-config={cfg}")
        try:
            self._spawn(head_args, "head")
            self.wait_for_nodes(1, timeout)
            for i, spec in enumerate(self.worker_specs):
                self._spawn([f"--address={self.address}", *self._node_args(spec)], f"worker{i}")
            self.wait_for_nodes(1 + len(self.worker_specs), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def alive_nodes(self) -> list[dict]:
        r = requests.get(f"{self.dashboard_url}/api/v0/nodes", headers=self.headers(),
                         params={"detail": "1", "limit": "100"}, timeout=10)
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout: float, exact: bool = False) -> list[dict]:
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a ray node exited ({p.args[:3]}...): see {self.tmp}/*.log\n" + self.logs())
            try:
                nodes = self.alive_nodes()
                if (len(nodes) == n) if exact else (len(nodes) >= n):
                    return nodes
                last = f"{len(nodes)} nodes alive"
            except (requests.RequestException, KeyError, ValueError) as e:
                last = repr(e)
            time.sleep(1)
        raise TimeoutError(f"cluster did not reach {n} nodes in {timeout}s ({last})\n" + self.logs())

    def logs(self) -> str:
        out = []
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                out.append(f"--- {name}\n" + Path(self.tmp, name).read_text(errors="replace")[-3000:])
        return "\n".join(out)

    # ---------------------------------------------------------------- stop

    def stop(self) -> None:
        # A throwaway test cluster need not shut down gracefully: `ray start --block` stops its node's
        # processes one by one on SIGTERM and took over 10 s, so each node's whole process group gets
        # SIGKILL at once; processes that left the group are found by _kill_leftovers.
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self._kill_leftovers()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Processes of this cluster that outlived their node: in a node's process group, or with
        this cluster's temp dir in their command line or environment."""
        import psutil

        groups = {p.pid for p in self.procs}
        mine = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                env = proc.info["environ"] or {}
                in_group = os.getpgid(proc.pid) in groups
            except (psutil.Error, OSError, TypeError):
                continue
            if in_group or self.tmp in cmd or env.get("RAY_TMPDIR", "").startswith(self.tmp):
                mine.append(proc)
        for proc in mine:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(mine, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

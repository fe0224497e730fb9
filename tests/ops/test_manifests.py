"""cluster/: every manifest of every kustomization validates against the KubeRay CRD schemas
(the KubeRay CRDs from the data directory, openAPIV3Schema) and the core Kubernetes schemas (kubernetes-validate, strict),
and has the shape raywiz relies on (autoscaling from zero, nothing exposed, secrets from Secrets,
storage in one place, jobs that load and fit the GPU group)."""

from __future__ import annotations

import ast
import copy
import gzip
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from raywiz import datasets
from raywiz.config import load_job
from raywiz.jobs import train_bundles
from tests.datafiles import require_data

from .kustomize import render

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
K8S_VERSION = "1.32.0"
IMAGE_ROOT = "/opt/raywiz"  # where cluster/Dockerfile puts the repository
VARIANTS = ["base", "overlays/small", "overlays/large"]


@lru_cache
def rendered(variant: str) -> tuple:
    return tuple(render(CLUSTER / variant))


def docs_of(variant: str, kind: str | None = None) -> list[dict]:
    return [copy.deepcopy(d) for d in rendered(variant) if kind is None or d["kind"] == kind]


def one(variant: str, kind: str) -> dict:
    [doc] = docs_of(variant, kind)
    return doc


# ---------------------------------------------------------------- schemas


def strict(schema):
    """Kubernetes prunes (kubectl --validate=strict rejects) fields a structural schema does not
    list; plain JSON Schema allows them. Forbid them, so a typo in a field name fails here."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@lru_cache
def crd_validator(kind: str):
    import jsonschema

    name = f"kuberay-crd-{kind.lower()}s"
    require_data(name)
    path = datasets.path_of(name)
    crd = yaml.load(gzip.open(path).read(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB each
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the core schema below
    return jsonschema.Draft7Validator(schema)


@lru_cache
def core_validator(schema_file: str):
    """A strict core-Kubernetes schema from kubernetes-validate (offline), by file name."""
    from importlib import resources

    import jsonschema
    from referencing import Registry, Resource

    base = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    schema = json.loads((base / schema_file).read_text())
    definitions = json.loads((base / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def pod_templates(doc: dict):
    """(path, PodTemplateSpec) of every Ray pod template in a KubeRay resource."""
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]
        cluster, prefix = spec.get("rayClusterSpec"), "spec.rayClusterSpec"
    elif doc["kind"] == "RayService":
        cluster, prefix = spec["rayClusterConfig"], "spec.rayClusterConfig"
    else:
        cluster, prefix = spec, "spec"
    if cluster:
        yield f"{prefix}.headGroupSpec.template", cluster["headGroupSpec"]["template"]
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            yield f"{prefix}.workerGroupSpecs[{i}].template", group["template"]


def cluster_specs(variant: str):
    """(resource name, RayCluster spec) of the RayCluster and of the RayService's cluster."""
    for doc in docs_of(variant):
        if doc["kind"] == "RayCluster":
            yield doc["metadata"]["name"], doc["spec"]
        elif doc["kind"] == "RayService":
            yield doc["metadata"]["name"], doc["spec"]["rayClusterConfig"]


def containers(variant: str):
    for doc in docs_of(variant):
        if doc["apiVersion"] == "ray.io/v1":
            for where, template in pod_templates(doc):
                for c in template["spec"]["containers"]:
                    yield f"{doc['kind']}/{doc['metadata']['name']} {where}", template["spec"], c


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_validates_against_kuberay_and_core_schemas(variant):
    docs = docs_of(variant)
    assert {d["kind"] for d in docs} >= {"RayCluster", "RayJob", "RayService", "ConfigMap", "PersistentVolumeClaim",
                                        "NetworkPolicy"}
    for doc in docs:
        name = f"{variant}: {doc['kind']}/{doc['metadata']['name']}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name
        if doc["apiVersion"] == "ray.io/v1":
            assert errors(crd_validator(doc["kind"]), doc) == [], name
            meta = {k: v for k, v in doc["metadata"].items()}
            assert errors(core_validator("objectmeta-meta-v1.json"), meta) == [], name
            for where, template in pod_templates(doc):
                assert errors(core_validator("podtemplatespec-v1.json"), template) == [], f"{name} {where}"
        else:
            import kubernetes_validate

            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_checks_catch_mistakes():
    """The validators are not vacuous: a misspelt field and a bad pod spec are both rejected."""
    bad = one("base", "RayCluster")
    bad["spec"]["workerGroupSpecs"][0]["minReplica"] = 0
    assert any("minReplica" in e for e in errors(crd_validator("RayCluster"), bad))
    template = one("base", "RayCluster")["spec"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["resource"] = {}
    assert errors(core_validator("podtemplatespec-v1.json"), template)


def test_kustomize_renderer_matches_kubectl():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl here; the Python renderer stands in for it")
    for variant in VARIANTS:
        out = subprocess.run([kubectl, "kustomize", str(CLUSTER / variant)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=lambda d: (d["kind"], d["metadata"]["name"]))
        ours = sorted(docs_of(variant), key=lambda d: (d["kind"], d["metadata"]["name"]))
        assert ours == theirs, variant


# ---------------------------------------------------------------- the shape raywiz relies on


@pytest.mark.parametrize("variant", VARIANTS)
def test_clusters_autoscale_from_zero_with_autoscaler_v2(variant):
    for name, spec in cluster_specs(variant):
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["autoscalerOptions"]["version"] == "v2", name
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {"name": "RAY_enable_autoscaler_v2", "value": "1"} in head["env"], name
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] == 0 and group["replicas"] == 0, (name, group["groupName"])
            assert group["idleTimeoutSeconds"] > 0 and group["maxReplicas"] >= 1
            pod = group["template"]["spec"]
            gpus = int(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
            if gpus:
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
                assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
    groups = {g["groupName"]: g for g in one(variant, "RayCluster")["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_nothing_is_exposed_outside_the_cluster(variant):
    for name, spec in cluster_specs(variant):
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", name
        assert not spec["headGroupSpec"].get("enableIngress"), name
    assert not [d for d in docs_of(variant) if d["kind"] in ("Service", "Ingress")]
    policy = one(variant, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchExpressions"] == [{"key": "ray.io/node-type", "operator": "Exists"}]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}]}]  # same namespace only


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_come_from_kubernetes_secrets(variant):
    from raywiz.tracking import is_secret_key

    for where, pod, c in containers(variant):
        for var in c.get("env", []):
            assert not (is_secret_key(var["name"]) and "value" in var), f"{where}: literal {var['name']}"
        if c["name"] != "ray-job-submitter":  # Ray pods get WANDB_API_KEY & co from the one Secret
            assert {"secretRef": {"name": "raywiz-secrets", "optional": True}} in c["envFrom"], where
    for name, spec in cluster_specs(variant):
        assert spec["authOptions"] == {"mode": "token", "secretName": "raywiz-ray-auth"}, name
    [submitter] = [c for where, pod, c in containers(variant) if c["name"] == "ray-job-submitter"]
    assert {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "raywiz-ray-auth", "key": "auth_token"}}} \
        in submitter["env"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_storage_is_configured_in_one_place(variant):
    storage = one(variant, "ConfigMap")["data"]["RAYWIZ_STORAGE"]
    text = json.dumps(docs_of(variant))
    assert text.count(storage) == 1  # only in the ConfigMap
    [pvc] = docs_of(variant, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, pod, c in containers(variant):
        assert {"configMapRef": {"name": "raywiz-storage"}} in c["envFrom"], where
        if c["name"] != "ray-job-submitter":
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], where
            assert {"name": "shared", "mountPath": "/mnt/shared"} in c["volumeMounts"], where
    assert os.path.commonpath([storage, "/mnt/shared"]) == "/mnt/shared"


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_image_named_in_one_place(variant):
    images = {c["image"] for _, _, c in containers(variant)}
    assert images == {"ghcr.io/your-org/raywiz:0.1.0"}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in dockerfile and f"WORKDIR {IMAGE_ROOT}" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            for src in shlex.split(line)[2:-1]:
                assert (REPO / src).exists(), f"cluster/Dockerfile copies {src}, which the repository lacks"


def entrypoint_job(variant: str, kind_doc: dict):
    """The raywiz command a RayJob runs, parsed by raywiz's own CLI, with its job file loaded."""
    from raywiz.cli import build_parser

    env = one(variant, "ConfigMap")["data"]
    argv = shlex.split(os.path.expandvars(kind_doc["spec"]["entrypoint"].replace("$RAYWIZ_STORAGE", env["RAYWIZ_STORAGE"])))
    assert argv[:3] == ["python", "-m", "raywiz.cli"]
    args = build_parser().parse_args(argv[3:])
    job_path = args.job.replace(IMAGE_ROOT, str(REPO))
    return args, load_job(job_path, args.overrides)


def fits(bundles: list[dict], pod_resources: dict, max_pods: int) -> bool:
    """Can the autoscaler place these bundles on at most max_pods pods of this shape?"""
    cpu = float(pod_resources["cpu"])
    gpu = float(pod_resources.get("nvidia.com/gpu", 0))
    free = []
    for b in bundles:
        for pod in free:
            if pod[0] >= b["CPU"] and pod[1] >= b.get("GPU", 0):
                pod[0] -= b["CPU"]
                pod[1] -= b.get("GPU", 0)
                break
        else:
            if len(free) == max_pods or cpu < b["CPU"] or gpu < b.get("GPU", 0):
                return False
            free.append([cpu - b["CPU"], gpu - b.get("GPU", 0)])
    return True


@pytest.mark.parametrize("variant,job_name,workers", [("base", "wizardcoder-15b", 8),
                                                       ("overlays/large", "wizardcoder-15b", 16),
                                                       ("overlays/small", "starcoderbase-1b", 1)])
def test_rayjob_runs_a_valid_job_that_fits_the_gpu_group(variant, job_name, workers):
    rayjob = one(variant, "RayJob")
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": one(variant, "RayCluster")["metadata"]["name"]}
    args, job = entrypoint_job(variant, rayjob)
    assert args.command == "run" and job.name == job_name and rayjob["metadata"]["name"] == job_name
    assert job.storage == one(variant, "ConfigMap")["data"]["RAYWIZ_STORAGE"]  # the one place, via --set
    assert job.train.scaling.num_workers == workers and job.train.grad_accum_steps >= 1
    gpu_group = next(g for g in one(variant, "RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    bundles = train_bundles(job)
    assert fits(bundles, limits, gpu_group["maxReplicas"]), (bundles, limits, gpu_group["maxReplicas"])
    assert not fits(bundles + bundles, limits, gpu_group["maxReplicas"])  # sized for the job, not far beyond


@pytest.mark.parametrize("variant,job_file", [("base", "jobs/wizardcoder-15b.yaml"),
                                               ("overlays/large", "jobs/wizardcoder-15b.yaml"),
                                               ("overlays/small", "jobs/1b-single-gpu.yaml")])
def test_rayservice_serves_a_job_file(variant, job_file):
    service = one(variant, "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    [app] = config["applications"]
    assert app["args"]["job"] == f"{IMAGE_ROOT}/{job_file}"
    assert app["args"]["overrides"] == ["storage=$RAYWIZ_STORAGE"]  # the ConfigMap's value, in the replica's env
    job = load_job(REPO / job_file, app["args"]["overrides"])
    gpu_group = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    per_pod = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert job.serve.num_gpus is not None and job.serve.num_gpus <= per_pod
    # The import path names a top-level function of a raywiz module (read here; imported below).
    module, _, attr = app["import_path"].partition(":")
    source = Path(importlib.util.find_spec(module).origin).read_text()
    assert attr in {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


@pytest.mark.slow
def test_rayservice_app_builder_reads_storage_from_the_configmap(monkeypatch):
    """Build the Serve application the way the RayService does, in a replica's environment."""
    from raywiz.serve.app import app_builder

    storage = one("base", "ConfigMap")["data"]["RAYWIZ_STORAGE"]
    monkeypatch.setenv("RAYWIZ_STORAGE", storage)
    [app] = yaml.safe_load(one("base", "RayService")["spec"]["serveConfigV2"])["applications"]
    application = app_builder({**app["args"], "job": app["args"]["job"].replace(IMAGE_ROOT, str(REPO))})
    [settings] = application._bound_deployment.init_args
    assert settings["storage"] == storage

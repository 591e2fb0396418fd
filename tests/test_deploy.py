"""Deployment files: every YAML under deploy/ parses and validates against the schema of whatever
consumes it (Ray's cluster-launcher schema, the Kubernetes OpenAPI schemas, a KubeRay schema
written here), the Docker image installs the locked environment, and jobs/*.py forward to the CLI.

Fast and offline: no cluster, no Docker engine, no network."""

from __future__ import annotations

import copy
import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE = "auxray:latest"

EXPECTED_YAML = [
    "deploy/cluster.yaml",
    "deploy/kuberay/raycluster.yaml",
    "deploy/kuberay/rayjob.yaml",
    "deploy/kuberay/storage.yaml",
    "deploy/mlflow/k8s.yaml",
    "deploy/mlflow/docker-compose.yaml",
]
# Plain Kubernetes manifests (validated with kubernetes-validate's bundled OpenAPI schemas).
CORE_MANIFESTS = ["deploy/kuberay/storage.yaml", "deploy/mlflow/k8s.yaml"]
K8S_VERSION = kubernetes_validate.latest_version()


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one_doc(rel: str) -> dict[str, Any]:
    docs = yaml_docs(REPO / rel)
    assert len(docs) == 1, f"{rel}: expected one YAML document, got {len(docs)}"
    return docs[0]


# --------------------------------------------------------------------------------------------- YAML


def test_every_deploy_yaml_parses_to_mappings() -> None:
    found = sorted(str(p.relative_to(REPO)) for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})
    missing = sorted(set(EXPECTED_YAML) - set(found))
    assert not missing, f"missing deployment files: {missing}"
    for rel in found:
        docs = yaml_docs(REPO / rel)
        assert docs, f"{rel} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{rel}: a document is a {type(doc).__name__}, not a mapping"


# ------------------------------------------------------------------------------ Ray cluster launcher


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert path.is_file(), f"Ray's cluster-launcher schema not found at {path}"
    return json.loads(path.read_text())


def test_cluster_yaml_validates_against_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = one_doc("deploy/cluster.yaml")
    jsonschema.validate(cfg, ray_schema())
    validate_config(cfg)  # Ray's own check: schema + head_node_type / min_workers consistency
    validate_config(prepare_config(copy.deepcopy(cfg)))  # after Ray merges in the provider defaults


def test_rays_schema_rejects_a_broken_cluster_yaml() -> None:
    """The validation above is not vacuous: the same schema rejects typical mistakes."""
    cfg = one_doc("deploy/cluster.yaml")
    schema = ray_schema()
    for breakage in (
        lambda c: c.update(max_worker=4),  # misspelt top-level key
        lambda c: c["docker"].update(imagee="x"),  # misspelt docker key
        lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
        lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="one"),
    ):
        broken = copy.deepcopy(cfg)
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_cluster_yaml_runs_the_image_with_gpu_workers_and_sized_object_stores() -> None:
    cfg = one_doc("deploy/cluster.yaml")
    assert cfg["docker"]["image"] == IMAGE
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head should not take training work"
    gpu_types = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker node type"
    assert sum(t.get("max_workers", 0) for t in gpu_types) >= 2, "a 2-worker run needs >= 2 GPU nodes"
    for key, extra in (("head_start_ray_commands", "--head"), ("worker_start_ray_commands", "--address=")):
        start = " ".join(cfg[key])
        assert "ray start" in start and extra in start, key
        assert re.search(r"--object-store-memory=\d+", start), f"{key}: no object store sizing"
        assert "RAY_AUTH_MODE=" in start, f"{key}: RAY_AUTH_MODE not pinned"
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


# ------------------------------------------------------------------------------ Kubernetes (core)


def core_k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for rel in CORE_MANIFESTS:
        for doc in yaml_docs(REPO / rel):
            yield rel, doc


def test_core_kubernetes_manifests_validate_offline() -> None:
    kinds = set()
    for rel, doc in core_k8s_docs():
        kinds.add(doc["kind"])
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{rel}: {doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= kinds


def test_kubernetes_validation_is_not_vacuous() -> None:
    deployment = next(d for _, d in core_k8s_docs() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "five thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = 1  # strict mode: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_mlflow_services_select_their_deployments_and_stay_in_cluster() -> None:
    docs = yaml_docs(REPO / "deploy/mlflow/k8s.yaml")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = [d for d in docs if d["kind"] == "Service"]
    assert {"mlflow", "mlflow-postgres"} <= set(deployments)
    for svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{svc['metadata']['name']} exposed outside"
        matches = [
            d for d in deployments.values()
            if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matches, f"Service {svc['metadata']['name']} selects no Deployment"
        container_ports = {p.get("name") for c in matches[0]["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{svc['metadata']['name']}: unknown targetPort"
    args = " ".join(deployments["mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--backend-store-uri=postgresql" in args and "@mlflow-postgres:5432/" in args
    assert "mlflow.auxray.svc.cluster.local" in args, "the in-cluster URI must be an allowed host"
    assert not [d for d in docs if d["kind"] == "Secret"], "DB credentials belong in a Secret created at deploy time"
    env = deployments["mlflow"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert all("value" not in e for e in env if "PASSWORD" in e["name"]), "a password in plain text"


def test_docker_compose_publishes_mlflow_on_loopback_only() -> None:
    compose = one_doc("deploy/mlflow/docker-compose.yaml")
    assert set(compose["services"]) == {"postgres", "mlflow"}
    assert compose["services"]["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert "ports" not in compose["services"]["postgres"]
    assert "postgresql" in " ".join(compose["services"]["mlflow"]["command"])


# ------------------------------------------------------------------------------------------ KubeRay
#
# Hand-written on purpose: KubeRay's RayCluster/RayJob CRD (its OpenAPI v3 schema) ships only in
# the KubeRay Helm chart / operator repository, in no PyPI package we depend on, and this test
# suite runs offline. So this schema pins the fields auxray relies on (and the classic mistakes:
# rayStartParams values must be strings, worker groups need replicas/min/max), and the pod
# templates inside are validated separately against the real Kubernetes PodTemplate schema.

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_CONTAINERS = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "object", "required": ["name", "image"],
              "properties": {"name": {"type": "string"}, "image": {"type": "string", "minLength": 1}}},
}
_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["containers"], "properties": {"containers": _CONTAINERS}}},
}
_COUNT = {"type": "integer", "minimum": 0}
RAY_CLUSTER_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "properties": {
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "rayStartParams": _STR_MAP,
                "template": _TEMPLATE,
            },
        },
        "workerGroupSpecs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                "properties": {
                    "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "replicas": _COUNT,
                    "minReplicas": _COUNT,
                    "maxReplicas": _COUNT,
                    "rayStartParams": _STR_MAP,
                    "template": _TEMPLATE,
                },
            },
        },
    },
}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
RAY_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": _METADATA,
        "spec": RAY_CLUSTER_SPEC_SCHEMA,
    },
}
RAY_JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec", "submissionMode", "shutdownAfterJobFinishes",
                         "ttlSecondsAfterFinished"],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": _COUNT,
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "rayClusterSpec": RAY_CLUSTER_SPEC_SCHEMA,
            },
        },
    },
}


def raycluster() -> dict[str, Any]:
    return one_doc("deploy/kuberay/raycluster.yaml")


def rayjob() -> dict[str, Any]:
    return one_doc("deploy/kuberay/rayjob.yaml")


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    return [("RayCluster.spec", raycluster()["spec"]), ("RayJob.spec.rayClusterSpec", rayjob()["spec"]["rayClusterSpec"])]


def test_kuberay_resources_match_the_hand_written_schema() -> None:
    jsonschema.validate(raycluster(), RAY_CLUSTER_SCHEMA)
    jsonschema.validate(rayjob(), RAY_JOB_SCHEMA)


def test_kuberay_schema_is_not_vacuous() -> None:
    for breakage in (
        lambda d: d.update(apiVersion="ray.io/v1alpha1"),
        lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"),
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 4}),  # not a string
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"),
    ):
        broken = raycluster()
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, RAY_CLUSTER_SCHEMA)


def test_kuberay_pod_templates_are_valid_kubernetes() -> None:
    for where, spec in cluster_specs():
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        for name, group in groups:
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                            "template": group["template"]}
            try:
                kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{where} {name}: {err.message} at {list(err.path)}")


def test_kuberay_groups_use_the_image_and_gpu_workers() -> None:
    for where, spec in cluster_specs():
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["image"] == IMAGE, where
        assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {}), f"{where}: GPU on the head"
        assert spec["headGroupSpec"]["rayStartParams"].get("object-store-memory"), f"{where}: head object store"
        gpu_groups = 0
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where} {group['groupName']}"
            container = group["template"]["spec"]["containers"][0]
            assert container["image"] == IMAGE, f"{where} {group['groupName']}"
            limits = container["resources"]["limits"]
            if int(limits.get("nvidia.com/gpu", 0)) >= 1:
                gpu_groups += 1
                assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert gpu_groups, f"{where}: no worker group with nvidia.com/gpu limits"


def test_rayjob_entrypoint_runs_a_repo_script_on_an_existing_config_that_fits_the_cluster() -> None:
    from auxray.cli import build_parser
    from auxray.config import load_config

    spec = rayjob()["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"], argv
    assert (REPO / argv[1]).is_file()
    args = build_parser().parse_args(["train", *argv[2:]])
    assert (REPO / args.config).is_file(), f"config {args.config} not in the repository"
    assert args.config == "configs/cifar10_5pct/auxilearn_labels.yaml"
    overrides = [*args.overrides, f"scaling.workers={args.workers}", f"scaling.gpus_per_worker={args.gpus_per_worker}"]
    cfg = load_config(REPO / args.config, overrides)  # every --set key must exist in the config schema
    assert (cfg.scaling.workers, cfg.scaling.gpus_per_worker) == (2, 1)
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    assert gpus >= cfg.scaling.workers * cfg.scaling.gpus_per_worker, "the RayJob's cluster has too few GPUs"
    # Paths the run writes/reads must be mounted volumes in the job's pods.
    mounts = {m["mountPath"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]
              for m in g["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert any(cfg.data.root.startswith(m + "/") for m in mounts), cfg.data.root
    assert any(str(cfg.trainer.checkpoint_dir).startswith(m + "/") for m in mounts), cfg.trainer.checkpoint_dir
    # The working dir uploaded by the submitter is the repository inside the image.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert workdir and runtime_env["working_dir"] == workdir.group(1)


def test_rayjob_cluster_is_the_raycluster_of_deploy() -> None:
    """The RayJob embeds its own cluster spec; keep it in step with raycluster.yaml."""
    def shape(spec: dict[str, Any]) -> Any:
        head = spec["headGroupSpec"]["template"]["spec"]
        workers = spec["workerGroupSpecs"][0]["template"]["spec"]
        return (
            spec["rayVersion"],
            spec["headGroupSpec"]["rayStartParams"],
            head["containers"][0]["env"], head["volumes"],
            spec["workerGroupSpecs"][0]["rayStartParams"],
            workers["containers"][0]["env"], workers["containers"][0]["resources"], workers["volumes"],
        )

    assert shape(raycluster()["spec"]) == shape(rayjob()["spec"]["rayClusterSpec"])


def test_kuberay_pvcs_exist_in_the_storage_manifest() -> None:
    claims = {d["metadata"]["name"] for d in yaml_docs(REPO / "deploy/kuberay/storage.yaml")
              if d["kind"] == "PersistentVolumeClaim"}
    for where, spec in cluster_specs():
        for tmpl in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
            for vol in tmpl["spec"].get("volumes", []):
                if "persistentVolumeClaim" in vol:
                    assert vol["persistentVolumeClaim"]["claimName"] in claims, f"{where}: {vol}"


# ------------------------------------------------------------------------------------------- Docker


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_installs_the_locked_env_before_copying_the_repo() -> None:
    steps = dockerfile_instructions()
    assert steps[-1][0] in {"CMD", "ENTRYPOINT"}
    froms = [args for op, args in steps if op == "FROM"]
    assert froms, "no FROM"
    arg_defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M))
    final_base = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults.get(m.group(1), m.group(0)), froms[-1])
    assert re.match(r"(nvidia/cuda:\S+|rayproject/ray:\S+gpu\S*)$", final_base), f"not a CUDA base: {final_base}"

    def index(pred: Any, what: str) -> int:
        hits = [i for i, step in enumerate(steps) if pred(*step)]
        assert hits, f"Dockerfile: no {what}"
        return hits[0]

    copy_lock = index(lambda op, a: op == "COPY" and "uv.lock" in a.split() and "pyproject.toml" in a.split(),
                      "COPY pyproject.toml uv.lock")
    first_sync = index(lambda op, a: op == "RUN" and "uv sync" in a, "RUN uv sync")
    copy_all = index(lambda op, a: op == "COPY" and a.split()[:1] == ["."], "COPY . .")
    assert copy_lock < first_sync < copy_all, "dependencies must be installed from the lock before the source is copied"
    syncs = [a for op, a in steps if op == "RUN" and "uv sync" in a]
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync, sync
    assert any(i > copy_all for i, (op, a) in enumerate(steps) if op == "RUN" and "uv sync" in a), \
        "the project itself is never installed after COPY . ."
    assert any(op == "COPY" and "/uv" in a for op, a in steps) or any("install" in a and "uv" in a for op, a in steps if op == "RUN"), \
        "uv is not installed"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    patterns = {ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    for required in (".venv", "runs", "mlruns", "*.db", ".git"):
        assert required in patterns, f".dockerignore lacks {required}"
    assert "uv.lock" not in patterns and "pyproject.toml" not in patterns


# --------------------------------------------------------------------------------------------- jobs


def test_jobs_train_help_goes_through_the_cli(tmp_path: Path) -> None:
    # Run from another directory: the script must find the package through its own sys.path entry.
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: auxray train" in proc.stdout


@pytest.mark.parametrize("script,command", [("train.py", "train"), ("sweep.py", "sweep")])
def test_jobs_forward_argv_to_the_cli(script: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import auxray.cli

    seen: list[list[str]] = []
    monkeypatch.setattr(auxray.cli, "main", lambda argv=None: seen.append(list(argv)))
    monkeypatch.setattr(sys, "argv", [f"jobs/{script}", "configs/x.yaml", "--workers", "2", "--set", "a.b=1"])
    runpy.run_path(str(REPO / "jobs" / script), run_name="__main__")
    assert seen == [[command, "configs/x.yaml", "--workers", "2", "--set", "a.b=1"]]

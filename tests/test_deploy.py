"""Deployment files: every YAML under deploy/ parses and validates against the schema of whatever
consumes it (Ray's cluster-launcher schema, the Kubernetes OpenAPI schemas, a KubeRay schema
written here), the Docker image installs the locked environment, and jobs/*.py forward to the CLI.

Fast and offline: no cluster, no Docker engine, no network."""

from __future__ import annotations

import copy
import json
import posixpath
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
STORAGE_ENV = "AUXRAY_STORAGE"  # auxray.paths.STORAGE_ENV: where relative output paths resolve


def is_under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (lexically, after normalising; both absolute POSIX paths)."""
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return posixpath.isabs(path) and posixpath.isabs(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


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
    for breakage, message in (
        (lambda c: c.update(max_worker=4), "'max_worker' was unexpected"),  # misspelt top-level key
        (lambda c: c["docker"].update(imagee="x"), "'imagee' was unexpected"),  # misspelt docker key
        (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), "'node_config' is a required"),
        (
            lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="one"),
            "'one' is not of type 'integer'",
        ),
    ):
        broken = copy.deepcopy(cfg)
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError, match=message):
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


def docker_run_flags(options: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(--env/-e variables, -v/--volume host:container binds) of the launcher's docker run options."""
    env: dict[str, str] = {}
    binds: list[tuple[str, str]] = []
    argv = shlex.split(" ".join(options))
    for i, arg in enumerate(argv):
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if flag in {"-e", "--env"}:
            key, _, val = value.partition("=")
            env[key] = val
        elif flag in {"-v", "--volume"}:
            host, _, rest = value.partition(":")
            binds.append((host, rest.split(":")[0]))
    return env, binds


def nfs_mounts(commands: list[str]) -> dict[str, str]:
    """host mount point -> NFS export, for every `mount -t nfs[4]` in host commands."""
    text = " ".join(" ".join(commands).split())
    return {
        target: export
        for export, target in re.findall(r"\bmount -t nfs4? (?:-o \S+ )?(\S+) (/\S*?)(?=[;\s&|]|$)", text)
    }


def launcher_storage_problems(cfg: dict[str, Any]) -> list[str]:
    """Why runs' outputs would not be on storage every node of a cluster-launcher cluster shares; [] if they are.

    For every node (the head as `ray up` starts it from the top-level fields, and every node type as the
    autoscaler starts it, with its own `initialization_commands` / `docker` overriding the top-level
    ones): the container gets AUXRAY_STORAGE, bind-mounted at the same path from the host, where the
    host's initialization_commands mount an NFS export (EFS) and then fail unless it is mounted."""
    problems: list[str] = []
    nodes = [("head (ray up)", True, cfg["initialization_commands"], cfg["docker"])]
    for name, node_type in cfg["available_node_types"].items():
        docker = {**cfg["docker"], **node_type.get("docker", {})}
        nodes.append(
            (
                name,
                name == cfg["head_node_type"],
                node_type.get("initialization_commands", cfg["initialization_commands"]),
                docker,
            )
        )
    storages = set()
    for name, is_head, init, docker in nodes:
        env, binds = docker_run_flags(
            docker.get("run_options", []) + docker.get("head_run_options" if is_head else "worker_run_options", [])
        )
        storage = env.get(STORAGE_ENV)
        if not storage or not posixpath.isabs(storage):
            problems.append(f"{name}: no absolute {STORAGE_ENV} in the container's env ({storage!r})")
            continue
        storages.add(posixpath.normpath(storage))
        bind = [(h, c) for h, c in binds if is_under(storage, c)]
        if not bind:
            problems.append(f"{name}: {STORAGE_ENV}={storage} is not bind-mounted into the container")
            continue
        host, container = bind[-1]
        if posixpath.normpath(host) != posixpath.normpath(container):
            problems.append(f"{name}: {container} is bound from another host path ({host})")
        mounts = nfs_mounts(init)
        shared = [t for t in mounts if is_under(host, t)]
        if not shared:
            problems.append(f"{name}: the host's initialization_commands mount no NFS export at/above {host}")
        elif not any(c.strip() == f"mountpoint -q {shared[0]}" for c in init):
            problems.append(f"{name}: initialization_commands do not fail when {shared[0]} is not mounted")
    if len(storages) > 1:
        problems.append(f"nodes disagree on {STORAGE_ENV}: {sorted(storages)}")
    return problems


def test_cluster_yaml_puts_runs_on_shared_storage_on_every_node() -> None:
    cfg = one_doc("deploy/cluster.yaml")
    assert launcher_storage_problems(cfg) == []
    # The NFS export is a placeholder the header tells the user to replace.
    (export,) = set(nfs_mounts(cfg["initialization_commands"]).values())
    header = (DEPLOY / "cluster.yaml").read_text().split("\ncluster_name:")[0]
    assert "PLACEHOLDER" in export and export in header, export


def test_cluster_storage_check_is_not_vacuous() -> None:
    cfg = one_doc("deploy/cluster.yaml")
    storage = docker_run_flags(cfg["docker"]["run_options"])[0][STORAGE_ENV]

    def drop(option: str) -> Any:
        return lambda c: c["docker"].update(run_options=[o for o in c["docker"]["run_options"] if option not in o])

    for breakage in (
        drop(f"{STORAGE_ENV}="),  # no env: a job would write under ~/auxray on the head only
        drop(f":{storage}"),  # env set but the shared mount is not in the container
        lambda c: c["docker"]["run_options"].append(f"--env {STORAGE_ENV}=/tmp/auxray"),
        lambda c: c["docker"]["run_options"].append(f"-v /home/ubuntu/runs:{storage}"),
        lambda c: c["available_node_types"]["gpu_worker"].update(initialization_commands=["nvidia-smi || true"]),
        lambda c: c["available_node_types"]["gpu_worker"].update(docker={"run_options": ["--ulimit nofile=1024:1024"]}),
        lambda c: c["docker"].update(worker_run_options=[f"--env {STORAGE_ENV}={storage}/other"]),
        lambda c: c.update(
            initialization_commands=[
                x for x in c["initialization_commands"] if "mountpoint" not in x or "mount -t" in x
            ]
        ),
    ):
        broken = copy.deepcopy(cfg)
        breakage(broken)
        assert launcher_storage_problems(broken), breakage


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
    with pytest.raises(kubernetes_validate.ValidationError, match="'five thousand' is not of type 'integer'"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = 1  # strict mode: unknown field
    with pytest.raises(kubernetes_validate.ValidationError, match=r"\('replica' was unexpected\)"):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_mlflow_services_select_their_deployments_and_stay_in_cluster() -> None:
    docs = yaml_docs(REPO / "deploy/mlflow/k8s.yaml")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = [d for d in docs if d["kind"] == "Service"]
    assert {"mlflow", "mlflow-postgres"} <= set(deployments)
    for svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{svc['metadata']['name']} exposed outside"
        matches = [
            d
            for d in deployments.values()
            if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matches, f"Service {svc['metadata']['name']} selects no Deployment"
        container_ports = {
            p.get("name") for c in matches[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        }
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
    "items": {
        "type": "object",
        "required": ["name", "image"],
        "properties": {"name": {"type": "string"}, "image": {"type": "string", "minLength": 1}},
    },
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
            "required": [
                "entrypoint",
                "rayClusterSpec",
                "submissionMode",
                "shutdownAfterJobFinishes",
                "ttlSecondsAfterFinished",
            ],
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
    return [
        ("RayCluster.spec", raycluster()["spec"]),
        ("RayJob.spec.rayClusterSpec", rayjob()["spec"]["rayClusterSpec"]),
    ]


def pod_specs(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group, pod spec) of the head group and every worker group."""
    return [("head", spec["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]
    ]


def ray_container_env(pod: dict[str, Any]) -> dict[str, str]:
    """Plain env values of the Ray container (KubeRay runs Ray in a pod's first container)."""
    return {e["name"]: e["value"] for e in pod["containers"][0].get("env", []) if "value" in e}


def shared_claims() -> set[str]:
    """PVCs of storage.yaml that pods on different nodes can mount read-write at the same time."""
    return {
        d["metadata"]["name"]
        for d in yaml_docs(REPO / "deploy/kuberay/storage.yaml")
        if d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"]
    }


def shared_mounts(pod: dict[str, Any]) -> set[str]:
    """Where the Ray container mounts a ReadWriteMany PVC read-write."""
    claims = shared_claims()
    volumes = {
        v["name"]
        for v in pod.get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") in claims
        and not v["persistentVolumeClaim"].get("readOnly")
    }
    return {
        m["mountPath"]
        for m in pod["containers"][0].get("volumeMounts", [])
        if m["name"] in volumes and not m.get("readOnly")
    }


def kuberay_storage_problems(spec: dict[str, Any]) -> list[str]:
    """Why a run's outputs would not be on storage that the head and every worker share; [] if they are."""
    problems = []
    storages = set()
    for group, pod in pod_specs(spec):
        storage = ray_container_env(pod).get(STORAGE_ENV)
        if not storage or not posixpath.isabs(storage):
            problems.append(f"{group}: no absolute {STORAGE_ENV} in the Ray container's env ({storage!r})")
            continue
        storages.add(posixpath.normpath(storage))
        if not any(is_under(storage, m) for m in shared_mounts(pod)):
            problems.append(f"{group}: {STORAGE_ENV}={storage} is not on a read-write ReadWriteMany volume")
    if len(storages) > 1:
        problems.append(f"groups disagree on {STORAGE_ENV}: {sorted(storages)}")
    return problems


def test_kuberay_shared_storage_claim_is_read_write_many() -> None:
    claims = {
        d["metadata"]["name"]: d
        for d in yaml_docs(REPO / "deploy/kuberay/storage.yaml")
        if d["kind"] == "PersistentVolumeClaim"
    }
    assert claims["auxray-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert shared_claims() >= {"auxray-shared"}


def test_kuberay_pods_put_runs_on_shared_storage() -> None:
    for where, spec in cluster_specs():
        assert kuberay_storage_problems(spec) == [], where


def test_kuberay_storage_check_is_not_vacuous() -> None:
    def env_of(group: int) -> Any:
        def pod(d: dict[str, Any]) -> dict[str, Any]:
            return pod_specs(d["spec"])[group][1]

        return pod

    def set_env(group: int, value: str | None) -> Any:
        def breakage(d: dict[str, Any]) -> None:
            container = env_of(group)(d)["containers"][0]
            container["env"] = [e for e in container["env"] if e["name"] != STORAGE_ENV]
            if value is not None:
                container["env"].append({"name": STORAGE_ENV, "value": value})

        return breakage

    def unmount_shared(d: dict[str, Any]) -> None:
        container = env_of(1)(d)["containers"][0]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "cluster-storage"]

    def read_only_shared(d: dict[str, Any]) -> None:
        for m in env_of(0)(d)["containers"][0]["volumeMounts"]:
            if m["name"] == "cluster-storage":
                m["readOnly"] = True

    def node_local_claim(d: dict[str, Any]) -> None:
        for v in env_of(1)(d)["volumes"]:
            if v["name"] == "cluster-storage":
                v.pop("persistentVolumeClaim")
                v["emptyDir"] = {}

    for breakage in (
        set_env(0, None),
        set_env(1, None),  # head / worker without the variable
        set_env(1, "/tmp/ray/auxray"),  # an emptyDir: node-local, gone with the pod
        set_env(0, "/mnt/data/runs"),  # the read-only data volume
        set_env(1, "/mnt/cluster_storage/other"),  # shared, but not where the head writes
        set_env(0, "runs"),  # relative: would resolve in the job's temporary working copy
        unmount_shared,
        read_only_shared,
        node_local_claim,
    ):
        broken = raycluster()
        breakage(broken)
        assert kuberay_storage_problems(broken["spec"]), breakage


def test_kuberay_mlflow_uri_is_the_in_cluster_mlflow_service() -> None:
    (svc,) = [
        d
        for d in yaml_docs(REPO / "deploy/mlflow/k8s.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"
    ]
    (port,) = [p["port"] for p in svc["spec"]["ports"]]
    uri = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{port}"
    for where, spec in cluster_specs():
        for group, pod in pod_specs(spec):
            assert ray_container_env(pod).get("MLFLOW_TRACKING_URI") == uri, f"{where} {group}"
    # The RayJob's runtime env may repeat pod env, but never contradict it.
    runtime_vars = yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"]).get("env_vars", {})
    head_env = ray_container_env(pod_specs(rayjob()["spec"]["rayClusterSpec"])[0][1])
    for key in runtime_vars.keys() & head_env.keys():
        assert runtime_vars[key] == head_env[key], key
    assert runtime_vars.get("MLFLOW_TRACKING_URI", uri) == uri


def test_kuberay_resources_match_the_hand_written_schema() -> None:
    jsonschema.validate(raycluster(), RAY_CLUSTER_SCHEMA)
    jsonschema.validate(rayjob(), RAY_JOB_SCHEMA)


def test_kuberay_schema_is_not_vacuous() -> None:
    for breakage, message in (
        (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "'ray.io/v1' was expected"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), "'maxReplicas' is a required property"),
        (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 4}), "4 is not of type 'string'"),
        (
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"),
            "'image' is a required property",
        ),
    ):
        broken = raycluster()
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError, match=message):
            jsonschema.validate(broken, RAY_CLUSTER_SCHEMA)


def test_kuberay_pod_templates_are_valid_kubernetes() -> None:
    for where, spec in cluster_specs():
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        for name, group in groups:
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": name},
                "template": group["template"],
            }
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


def test_rayjob_entrypoint_runs_a_repo_script_on_an_existing_config_that_fits_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from auxray import paths
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
    gpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
    )
    assert gpus >= cfg.scaling.workers * cfg.scaling.gpus_per_worker, "the RayJob's cluster has too few GPUs"
    # Paths the run reads must be mounted volumes in the job's pods: data.root must be absolute (a
    # relative one would point into the job's temporary working copy).
    pods = pod_specs(spec["rayClusterSpec"])
    for group, pod in pods:
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert any(is_under(cfg.data.root, m) for m in mounts), f"{group}: {cfg.data.root}"
    # Paths it writes resolve as the driver resolves them (auxray.paths, in the head pod, inside a Ray
    # job, with the head's env): an explicit absolute checkpoint_dir, else AUXRAY_STORAGE. Wherever
    # that is, it must be on a shared read-write volume of the head and of every worker group.
    head_env = ray_container_env(pods[0][1])
    monkeypatch.setenv(paths.JOB_ENV, "{}")
    if STORAGE_ENV in head_env:
        monkeypatch.setenv(STORAGE_ENV, head_env[STORAGE_ENV])
    else:
        monkeypatch.delenv(STORAGE_ENV, raising=False)
    resolved = paths.absolute_paths(cfg)
    outputs = [resolved.trainer.checkpoint_dir, resolved.data.cache_dir]
    for out in [str(o) for o in outputs if o is not None]:
        for group, pod in pods:
            assert any(is_under(out, m) for m in shared_mounts(pod)), f"{group}: {out} is not on shared storage"
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
            head["containers"][0]["env"],
            head["volumes"],
            spec["workerGroupSpecs"][0]["rayStartParams"],
            workers["containers"][0]["env"],
            workers["containers"][0]["resources"],
            workers["volumes"],
        )

    assert shape(raycluster()["spec"]) == shape(rayjob()["spec"]["rayClusterSpec"])


def test_kuberay_pvcs_exist_in_the_storage_manifest() -> None:
    claims = {
        d["metadata"]["name"]
        for d in yaml_docs(REPO / "deploy/kuberay/storage.yaml")
        if d["kind"] == "PersistentVolumeClaim"
    }
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

    copy_lock = index(
        lambda op, a: op == "COPY" and "uv.lock" in a.split() and "pyproject.toml" in a.split(),
        "COPY pyproject.toml uv.lock",
    )
    first_sync = index(lambda op, a: op == "RUN" and "uv sync" in a, "RUN uv sync")
    copy_all = index(lambda op, a: op == "COPY" and a.split()[:1] == ["."], "COPY . .")
    assert copy_lock < first_sync < copy_all, "dependencies must be installed from the lock before the source is copied"
    syncs = [a for op, a in steps if op == "RUN" and "uv sync" in a]
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync, sync
    assert any(i > copy_all for i, (op, a) in enumerate(steps) if op == "RUN" and "uv sync" in a), (
        "the project itself is never installed after COPY . ."
    )
    assert any(op == "COPY" and "/uv" in a for op, a in steps) or any(
        "install" in a and "uv" in a for op, a in steps if op == "RUN"
    ), "uv is not installed"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    patterns = {
        ln.strip().rstrip("/")
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for required in (".venv", "runs", "mlruns", "*.db", ".git"):
        assert required in patterns, f".dockerignore lacks {required}"
    assert "uv.lock" not in patterns and "pyproject.toml" not in patterns


# --------------------------------------------------------------------------------------------- jobs


def test_jobs_train_help_goes_through_the_cli(tmp_path: Path) -> None:
    # Run from another directory: the script must find the package through its own sys.path entry.
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
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

"""The cluster files in cluster/ are valid where users apply them.

KubeRay manifests are checked as the Kubernetes API server checks a custom resource: against the
CRD's OpenAPI schema (KubeRay v1.7.0's, in ../shared/kuberay/), with fields the schema does not
declare rejected, list-map keys unique, formats and CEL rules enforced; then against the rules the
KubeRay operator checks in Go (ray-operator/controllers/ray/utils/validation.go: name lengths, DNS
labels, group resources and labels, autoscaler v2 restart policy, RayJob deletion settings) and the
replica bounds. Deployments and StatefulSets have their pod templates checked against the same
PodTemplateSpec schema. The `ray up` config is checked with the ray wheel's own schema, as
`ray up` does. Nothing secret is written in any file, and the GPU types are named alike everywhere.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import free_port

from raynas.errors import ConfigError
from raynas.runs.jobs import load_job

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
SCHEMAS = ROOT.parent / "shared" / "kuberay"
MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml")) + sorted((CLUSTER / "mlflow").glob("*.yaml"))
ACCELERATORS = ("A10G", "A100", "H100")

needs_schemas = pytest.mark.skipif(
    not (SCHEMAS / "raycluster-v1.schema.json").is_file(),
    reason=f"KubeRay CRD schemas not found in {SCHEMAS}",
)


# --- OpenAPI (CRD) schema -> JSON Schema, as the API server reads it --------------------------

def structural(node: Any) -> Any:
    """Turn a CRD's OpenAPI v3 schema into a JSON Schema that checks what the API server checks.

    An object that lists ``properties`` rejects others (the API server prunes or, with strict field
    validation, rejects them) unless it says ``x-kubernetes-preserve-unknown-fields``;
    ``nullable`` admits null; ``x-kubernetes-int-or-string`` admits an integer or a string.
    """
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: structural(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for key in ("apiVersion", "kind"):
            props.setdefault(key, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _has(value: Any, key: str) -> bool:
    return isinstance(value, dict) and key in value


# The CEL rules (x-kubernetes-validations) of the KubeRay v1.7.0 CRDs that apply when an object is
# created; transition rules (those that read oldSelf) apply only to updates.
CEL_RULES = {
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']":
        lambda s: s in ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))":
        lambda s: not ((_has(s, "onSuccess") or _has(s, "onFailure")) and _has(s, "deletionRules")),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))":
        lambda s: (_has(s, "onSuccess") and _has(s, "onFailure")) or _has(s, "deletionRules"),
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))":
        lambda s: not (_has(s, "jobStatus") and _has(s, "jobDeploymentStatus")),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)":
        lambda s: _has(s, "jobStatus") or _has(s, "jobDeploymentStatus"),
}


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict) -> Iterator[Any]:
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in instance]
        if len(set(seen)) != len(seen):
            yield jsonschema.ValidationError("duplicate entries in a list of type set")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen_keys = [tuple(item.get(k) for k in keys) for item in instance if isinstance(item, dict)]
        duplicates = {k for k in seen_keys if seen_keys.count(k) > 1}
        if duplicates:
            yield jsonschema.ValidationError(f"duplicate entries for map keys {keys}: {duplicates}")


def _cel(validator: Any, rules: list[dict], instance: Any, schema: dict) -> Iterator[Any]:
    for rule in rules:
        text = rule["rule"]
        if "oldSelf" in text:
            continue
        if text not in CEL_RULES:
            yield jsonschema.ValidationError(f"CEL rule not translated for this test: {text}")
        elif not CEL_RULES[text](instance):
            yield jsonschema.ValidationError(rule.get("message", text))


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel},
)


def crd_validator(kind: str) -> Any:
    raw = json.loads((SCHEMAS / f"{kind.lower()}-v1.schema.json").read_text())
    return KubeValidator(structural(raw), format_checker=FORMATS)


def schema_errors(validator: Any, obj: Any) -> list[str]:
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)
    )


# --- Kubernetes names and labels (k8s.io/apimachinery/pkg/util/validation) ---------------------

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def label_errors(labels: dict[str, Any] | None, where: str) -> list[str]:
    errors = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if prefix and not (len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix)):
            errors.append(f"{where}: label key {key!r} has an invalid prefix")
        if not (len(name) <= 63 and LABEL_NAME.match(name)):
            errors.append(f"{where}: label key {key!r} is not a qualified name")
        if not isinstance(value, str) or not (value == "" or (len(value) <= 63 and LABEL_NAME.match(value))):
            errors.append(f"{where}: label {key!r} has an invalid value {value!r}")
    return errors


# --- the KubeRay operator's own rules ----------------------------------------------------------

RAY_START_RESOURCE_KEYS = ("num-cpus", "num-gpus", "memory", "resources")


def ray_cluster_spec_errors(spec: dict, where: str) -> list[str]:
    """validation.go's ValidateRayClusterSpec, plus replica bounds, for what these files use."""
    errors = []
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    v2 = autoscaling and spec.get("autoscalerOptions", {}).get("version") == "v2"
    groups = [("head", spec["headGroupSpec"])] + [
        (g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])
    ]
    for name, group in groups:
        pod = group["template"]["spec"]
        if not pod.get("containers"):
            errors.append(f"{where} {name}: a group needs at least one container")
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(params.get(k) for k in RAY_START_RESOURCE_KEYS):
            errors.append(f"{where} {name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            errors.append(f"{where} {name}: rayStartParams['labels'] is not supported; use labels")
        errors += label_errors(group.get("labels"), f"{where} {name} (Ray labels)")
        if v2 and pod.get("restartPolicy") not in (None, "Never"):
            errors.append(f"{where} {name}: restartPolicy must be Never or unset with autoscaler v2")
        if group.get("suspend") and autoscaling:
            errors.append(f"{where} {name}: a group cannot be suspended with the autoscaler")
    names = [name for name, _ in groups[1:]]
    if len(set(names)) != len(names):
        errors.append(f"{where}: worker group names are not unique: {names}")
    for name, group in groups[1:]:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if low > high:
            errors.append(f"{where} {name}: minReplicas {low} > maxReplicas {high}")
        if "replicas" in group and not low <= group["replicas"] <= high:
            errors.append(f"{where} {name}: replicas {group['replicas']} outside [{low}, {high}]")
    for container in spec["headGroupSpec"]["template"]["spec"].get("containers", [])[:1]:
        names = {e.get("name") for e in container.get("env", [])}
        if "RAY_REDIS_ADDRESS" in names and "gcsFaultToleranceOptions" not in spec:
            errors.append(f"{where}: RAY_REDIS_ADDRESS needs gcsFaultToleranceOptions")
        if "RAY_enable_autoscaler_v2" in names and not autoscaling:
            errors.append(f"{where}: RAY_enable_autoscaler_v2 set without enableInTreeAutoscaling")
    return errors


def operator_errors(obj: dict) -> list[str]:
    """The KubeRay operator's checks of a RayCluster or RayJob (what the CRD schema cannot say)."""
    kind, name = obj["kind"], obj["metadata"].get("name", "")
    # RayCluster names end up in Service names with a 10-character suffix; a RayJob's gets 6 more.
    limit = {"RayCluster": 53, "RayJob": 47}[kind]
    errors = []
    if len(name) > limit:
        errors.append(f"{kind} name {name!r} is longer than {limit} characters")
    if not DNS1035.match(name):
        errors.append(f"{kind} name {name!r} is not a DNS-1035 label")
    spec = obj["spec"]
    if kind == "RayCluster":
        return errors + ray_cluster_spec_errors(spec, name)
    selector = spec.get("clusterSelector") or {}
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append("a RayJob that is not shut down after it finishes cannot be suspended")
    if not spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0:
        errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if "rayClusterSpec" not in spec and not selector:
        errors.append("a RayJob needs rayClusterSpec or clusterSelector")
    if selector and not selector.get("ray.io/cluster"):
        errors.append("clusterSelector needs ray.io/cluster")
    if selector and spec.get("submissionMode") == "SidecarMode":
        errors.append("clusterSelector is not supported in SidecarMode")
    if spec.get("submissionMode") == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("backoffLimit is incompatible with InteractiveMode")
    if "deletionStrategy" in spec:
        errors.append("deletionStrategy needs the RayJobDeletionPolicy feature gate; not used here")
    if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
        errors.append("activeDeadlineSeconds must be positive and backoffLimit non-negative")
    if not spec.get("entrypoint") and spec.get("submissionMode") != "InteractiveMode":
        errors.append("a RayJob needs an entrypoint")
    if spec.get("runtimeEnvYAML"):
        yaml.safe_load(spec["runtimeEnvYAML"])
    if "rayClusterSpec" in spec:
        errors += ray_cluster_spec_errors(spec["rayClusterSpec"], name)
    return errors


# --- core objects: Namespace, ConfigMap, Service, PVC, Deployment, StatefulSet -----------------

CORE_KINDS = {
    ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"),
}
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def pod_template_validator() -> Any:
    """The PodTemplateSpec schema that the RayCluster CRD embeds (the core API's, field for field)."""
    raw = json.loads((SCHEMAS / "raycluster-v1.schema.json").read_text())
    template = raw["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["template"]
    return KubeValidator(structural(template), format_checker=FORMATS)


def core_errors(obj: dict, pod_validator: Any) -> list[str]:
    kind, meta = obj.get("kind"), obj.get("metadata", {})
    where = f"{kind} {meta.get('name')}"
    errors = []
    if (obj.get("apiVersion"), kind) not in CORE_KINDS:
        return [f"{where}: unexpected apiVersion/kind {obj.get('apiVersion')}/{kind}"]
    if not DNS1123_SUBDOMAIN.match(meta.get("name", "")) or len(meta.get("name", "")) > 253:
        errors.append(f"{where}: metadata.name is not a DNS-1123 subdomain")
    if kind != "Namespace" and meta.get("namespace") != "raynas":
        errors.append(f"{where}: expected namespace raynas")
    errors += label_errors(meta.get("labels"), where)
    spec = obj.get("spec", {})
    if kind == "ConfigMap":
        for key, value in obj.get("data", {}).items():
            if not CONFIG_KEY.match(key) or not isinstance(value, str):
                errors.append(f"{where}: data[{key!r}] must be a valid key with a string value")
    elif kind == "PersistentVolumeClaim":
        modes = set(spec.get("accessModes", []))
        if not modes or modes - {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}:
            errors.append(f"{where}: invalid accessModes {modes}")
        if "storage" not in spec.get("resources", {}).get("requests", {}):
            errors.append(f"{where}: needs resources.requests.storage")
    elif kind == "Service":
        if not spec.get("selector") or not spec.get("ports"):
            errors.append(f"{where}: needs a selector and ports")
    elif kind in ("Deployment", "StatefulSet"):
        template = spec.get("template", {})
        errors += [f"{where} template {e}" for e in schema_errors(pod_validator, template)]
        selector = spec.get("selector", {}).get("matchLabels", {})
        labels = template.get("metadata", {}).get("labels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"{where}: selector does not match the pod template's labels")
        if kind == "StatefulSet" and not spec.get("serviceName"):
            errors.append(f"{where}: a StatefulSet needs serviceName")
    return errors


# --- loading -----------------------------------------------------------------------------------

def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in documents(path)]


def ray_pod_specs(obj: dict) -> list[dict]:
    """The pod specs of a RayCluster's groups, or of the cluster a RayJob makes."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayJob":
        spec = spec.get("rayClusterSpec", {"workerGroupSpecs": []})
        if "headGroupSpec" not in spec:
            return []
    elif obj["kind"] != "RayCluster":
        return []
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])
    ]


def pod_specs(obj: dict) -> list[dict]:
    """Every pod spec an object makes: Ray groups, RayJob submitters, Deployments, StatefulSets."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [spec["template"]["spec"]]
    submitter = [spec["submitterPodTemplate"]["spec"]] if "submitterPodTemplate" in spec else []
    return submitter + ray_pod_specs(obj)


def containers(obj: dict) -> list[dict]:
    return [c for pod in pod_specs(obj) for c in pod.get("containers", []) + pod.get("initContainers", [])]


def ray_objects() -> list[tuple[Path, dict]]:
    return [(p, o) for p, o in all_objects() if o.get("apiVersion") == "ray.io/v1"]


# --- tests: the converter and validators catch what the API server and the operator catch ------

@needs_schemas
def test_schema_check_rejects_unknown_fields_and_wrong_types() -> None:
    validator = crd_validator("RayCluster")
    good = next(o for _, o in ray_objects() if o["kind"] == "RayCluster")
    assert schema_errors(validator, good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # a misspelt field
    assert any("maxReplica" in e for e in schema_errors(validator, typo))
    wrong = copy.deepcopy(good)
    wrong["spec"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert any("minReplicas" in e for e in schema_errors(validator, wrong))
    deep = copy.deepcopy(good)
    deep["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "x"
    assert any("imagePullPolicy2" in e for e in schema_errors(validator, deep))
    twice = copy.deepcopy(good)  # containers are a list-map keyed by name
    pod = twice["spec"]["headGroupSpec"]["template"]["spec"]
    pod["containers"].append(copy.deepcopy(pod["containers"][0]))
    assert any("duplicate" in e for e in schema_errors(validator, twice))
    managed = copy.deepcopy(good)
    managed["spec"]["managedBy"] = "someone-else"
    assert any("managedBy" in e for e in schema_errors(validator, managed))
    quantity = copy.deepcopy(good)  # int-or-string: a number is as good as a string
    quantity["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    assert schema_errors(validator, quantity) == []


@needs_schemas
def test_operator_rules_catch_long_names_and_inverted_replica_bounds() -> None:
    good = next(o for _, o in ray_objects() if o["kind"] == "RayCluster")
    assert operator_errors(good) == []
    long_name = copy.deepcopy(good)
    long_name["metadata"]["name"] = "r" * 54
    assert any("53" in e for e in operator_errors(long_name))
    inverted = copy.deepcopy(good)
    inverted["spec"]["workerGroupSpecs"][0].update(minReplicas=3, maxReplicas=2, replicas=2)
    assert any("minReplicas 3 > maxReplicas 2" in e for e in operator_errors(inverted))
    twice = copy.deepcopy(good)
    twice["spec"]["workerGroupSpecs"].append(copy.deepcopy(twice["spec"]["workerGroupSpecs"][0]))
    assert any("not unique" in e for e in operator_errors(twice))
    both = copy.deepcopy(good)
    both["spec"]["workerGroupSpecs"][1]["rayStartParams"] = {"num-gpus": "1"}
    assert any("both" in e for e in operator_errors(both))
    job = next(o for _, o in ray_objects() if o["kind"] == "RayJob")
    assert operator_errors(job) == []
    ttl = copy.deepcopy(job)
    ttl["spec"].update(shutdownAfterJobFinishes=False, ttlSecondsAfterFinished=60)
    assert any("ttlSecondsAfterFinished" in e for e in operator_errors(ttl))
    job_name = copy.deepcopy(job)
    job_name["metadata"]["name"] = "j" * 48
    assert any("47" in e for e in operator_errors(job_name))


# --- tests: every file -------------------------------------------------------------------------

def test_there_are_manifests_for_every_part() -> None:
    kinds = {(p.parent.name, o["kind"]) for p, o in all_objects()}
    assert {("kuberay", "RayCluster"), ("kuberay", "RayJob"), ("kuberay", "ConfigMap"),
            ("mlflow", "Deployment"), ("mlflow", "StatefulSet"), ("mlflow", "Service")} <= kinds


@needs_schemas
@pytest.mark.parametrize(
    "path", [p for p in MANIFESTS if any(o.get("apiVersion") == "ray.io/v1" for o in documents(p))],
    ids=lambda p: p.name,
)
def test_kuberay_manifest_is_accepted(path: Path) -> None:
    for obj in documents(path):
        if obj.get("apiVersion") != "ray.io/v1":
            continue
        assert obj["kind"] in ("RayCluster", "RayJob")
        assert schema_errors(crd_validator(obj["kind"]), obj) == []
        assert operator_errors(obj) == []


@needs_schemas
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_objects_are_well_formed(path: Path) -> None:
    pod_validator = pod_template_validator()
    errors = [e for o in documents(path) if o.get("apiVersion") != "ray.io/v1"
              for e in core_errors(o, pod_validator)]
    assert errors == []


SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def test_nothing_secret_is_written_in_a_manifest() -> None:
    """Credentials reach pods only from Secrets; a value may refer to them as $(VAR) only."""
    kinds = {o["kind"] for _, o in all_objects()}
    assert "Secret" not in kinds  # users create their Secrets (docs/kubernetes.md)
    for path, obj in all_objects():
        for container in containers(obj):
            for env in container.get("env", []):
                if "value" not in env:
                    ref = env.get("valueFrom", {})
                    assert "secretKeyRef" in ref or "configMapKeyRef" in ref or "fieldRef" in ref
                    continue
                literal = re.sub(r"\$\([A-Z_]+\)", "", env["value"])
                assert not SECRET_WORDS.search(env["name"]), f"{path.name}: {env['name']} inline"
                assert not re.search(r"://[^/@]*:[^/@]+@", literal), f"{path.name}: password in a URI"
        if obj["kind"] == "ConfigMap":
            for key in obj["data"]:
                assert not SECRET_WORDS.search(key), f"{path.name}: {key} in a ConfigMap"


def test_ray_pods_take_mlflow_and_s3_settings_from_configmaps_and_secrets() -> None:
    for path, obj in ray_objects():
        for pod in ray_pod_specs(obj):
            ray = pod["containers"][0]
            sources = {(k, v["name"]) for ref in ray.get("envFrom", []) for k, v in ref.items()}
            assert {("configMapRef", "raynas-settings"), ("secretRef", "raynas-mlflow-client"),
                    ("secretRef", "raynas-s3")} <= sources, path.name
    settings = next(o for p, o in all_objects() if o["metadata"]["name"] == "raynas-settings")
    services = {o["metadata"]["name"]: o for _, o in all_objects() if o["kind"] == "Service"}
    mlflow = services["raynas-mlflow"]
    port = mlflow["spec"]["ports"][0]["port"]
    assert settings["data"]["MLFLOW_TRACKING_URI"] == f"http://raynas-mlflow.raynas.svc.cluster.local:{port}"


def _cluster() -> dict:
    return next(o for _, o in ray_objects() if o["kind"] == "RayCluster")


def test_raycluster_head_runs_no_training_and_gpu_groups_scale_from_zero() -> None:
    spec = _cluster()["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] and spec["autoscalerOptions"]["version"] == "v2"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert "cpu" in groups
    gpu = {name: g for name, g in groups.items() if name.startswith("gpu-")}
    assert {g["labels"]["ray.io/accelerator-type"] for g in gpu.values()} == set(ACCELERATORS)
    for name, group in gpu.items():
        accelerator = group["labels"]["ray.io/accelerator-type"]
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        # One Ray resource unit of the GPU type per Kubernetes GPU, so {"A100": 1} is one A100.
        assert group["resources"] == {accelerator: limits["nvidia.com/gpu"]}, name
        assert name == f"gpu-{accelerator.lower()}"
        assert pod["nodeSelector"] == {"raynas.io/accelerator": accelerator}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1 and group["idleTimeoutSeconds"] > 0


def test_every_ray_pod_has_a_memory_backed_dev_shm() -> None:
    for path, obj in ray_objects():
        for pod in ray_pod_specs(obj):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
            assert "/dev/shm" in mounts, path.name
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def _image_versions() -> tuple[str, str, str]:
    dockerfile = (CLUSTER / "docker" / "Dockerfile").read_text()
    torch = re.search(r"torch==([\d.]+)", dockerfile).group(1)
    ray = re.search(r"ray\[[a-z,]+\]==([\d.]+)", dockerfile).group(1)
    return dockerfile, torch, ray


def test_dockerfile_pins_the_project_versions_and_installs_raynas() -> None:
    dockerfile, torch, ray = _image_versions()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={torch}"' in pyproject
    torchvision = re.search(r"torchvision==([\d.]+)", dockerfile).group(1)
    assert f'"torchvision=={torchvision}"' in pyproject
    assert re.search(r"^RUN pip install /opt/raynas\b", dockerfile, re.MULTILINE)
    for source in ("pyproject.toml", "raynas", "jobs"):
        assert re.search(rf"^COPY .*\b{source}\b", dockerfile, re.MULTILINE), source
    assert "wget" in dockerfile  # KubeRay's probes
    assert re.search(r"^USER 1000$", dockerfile, re.MULTILINE)
    # Every Ray pod runs this image at the project's version, and the Ray it declares.
    for path, obj in ray_objects():
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        if "rayVersion" in spec:
            assert spec["rayVersion"] == ray, path.name
        for container in containers(obj):
            assert container["image"] == f"raynas:{_project_version()}", path.name
    mlflow = (CLUSTER / "docker" / "mlflow.Dockerfile").read_text()
    assert "psycopg2" in mlflow and "boto3" in mlflow and re.search(r"mlflow\[auth\]==[\d.]+", mlflow)


def _project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def _entrypoint_job(entrypoint: str) -> tuple[str, list[str]]:
    words = shlex.split(entrypoint)
    assert words[:2] == ["raynas", "search"], entrypoint
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return words[2], overrides


def test_rayjob_entrypoints_are_valid_raynas_searches() -> None:
    for path, obj in ray_objects():
        if obj["kind"] != "RayJob":
            continue
        job, overrides = _entrypoint_job(obj["spec"]["entrypoint"])
        assert job.startswith("jobs/"), "the image keeps jobs/ in the head's working directory"
        config = load_job(ROOT / job, overrides)
        assert config.execution.backend == "ray" and config.execution.address is None  # RAY_ADDRESS
        accelerator = config.execution.accelerator
        if "clusterSelector" in obj["spec"]:
            target = obj["spec"]["clusterSelector"]["ray.io/cluster"]
            assert target == _cluster()["metadata"]["name"]
            groups = _cluster()["spec"]["workerGroupSpecs"]
        else:
            groups = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        if accelerator:
            assert any(g.get("resources", {}).get(accelerator) for g in groups), path.name
            assert accelerator.lower() in obj["metadata"]["name"]
        # Some group can hold the search's actor (CPUs from the container's limits).
        fits = [
            g for g in groups
            if float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
            >= config.execution.cpus_per_worker
            and (not accelerator or accelerator in g.get("resources", {}))
        ]
        assert fits, path.name


def test_execution_accelerator_is_checked() -> None:
    job = ROOT / "jobs" / "darts_cifar10.yaml"
    assert load_job(job, ["execution.accelerator=A100"]).execution.accelerator == "A100"
    with pytest.raises(ConfigError, match=r"execution\.accelerator.*gpus_per_worker"):
        load_job(job, ["execution.accelerator=A100", "execution.gpus_per_worker=0"])
    with pytest.raises(ConfigError, match=r"execution\.accelerator.*resource name"):
        load_job(job, ["execution.accelerator=A 100"])



# --- security: pods run as their image's non-root user; Ray's ports stay inside the cluster ----

def _image_user(dockerfile: str) -> int:
    """The uid a Dockerfile of cluster/docker/ runs as: its USER, made by its useradd."""
    text = (CLUSTER / "docker" / dockerfile).read_text()
    uid = int(re.search(r"^USER (\d+)$", text, re.MULTILINE).group(1))
    assert re.search(rf"^RUN useradd .*--uid {uid}\b", text, re.MULTILINE), dockerfile
    return uid


def image_users() -> dict[str, int]:
    """Each image's user: ours from cluster/docker/; postgres's is uid 999
    (docker-library/postgres, 16/bookworm/Dockerfile: useradd ... --uid=999 postgres)."""
    return {"raynas": _image_user("Dockerfile"), "raynas-mlflow": _image_user("mlflow.Dockerfile"),
            "postgres": 999}


def _container_errors(container: dict, pod_uid: object, where: str) -> list[str]:
    ctx = container.get("securityContext", {})
    caps = ctx.get("capabilities", {})
    errors = []
    if ctx.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}: allowPrivilegeEscalation is not false")
    if ctx.get("privileged") or caps.get("add") or "ALL" not in caps.get("drop", []):
        errors.append(f"{where}: privileged, or capabilities not all dropped")
    if ctx.get("runAsNonRoot") is False or ctx.get("runAsUser", pod_uid) != image_users().get(
        container.get("image", "").split(":")[0], "an image of cluster/docker/ or postgres"
    ):
        errors.append(f"{where}: does not run as its image's user")
    if any("hostPort" in port for port in container.get("ports", [])):
        errors.append(f"{where}: a hostPort exposes the container on its node")
    return errors


def security_errors(obj: dict) -> list[str]:
    """What lets a pod run as root, without seccomp's runtime default or with privileges, and what
    exposes a port outside the cluster (a Ray head Service other than ClusterIP, an Ingress, a
    NodePort or LoadBalancer Service)."""
    kind, name = obj["kind"], obj["metadata"].get("name")
    errors = []
    for pod in pod_specs(obj):
        ctx = pod.get("securityContext", {})
        where = f"{kind} {name} pod {pod['containers'][0]['name']}"
        if ctx.get("runAsNonRoot") is not True or not isinstance(ctx.get("runAsUser"), int) \
                or ctx["runAsUser"] == 0:
            errors.append(f"{where}: needs runAsNonRoot: true and a runAsUser other than 0")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            errors.append(f"{where}: shares its node's network or processes")
        if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{where}: needs seccompProfile RuntimeDefault")
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            where_container = f"{where} container {container['name']}"
            errors += _container_errors(container, ctx.get("runAsUser"), where_container)
    if kind in ("RayCluster", "RayJob"):
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        head = spec.get("headGroupSpec", {})
        service_type = head.get("headService", {}).get("spec", {}).get("type", head.get("serviceType"))
        if service_type not in (None, "ClusterIP") or head.get("enableIngress"):
            errors.append(f"{kind} {name}: the head's ports (dashboard 8265, client 10001) leave the cluster")
        if spec.get("enableInTreeAutoscaling"):  # KubeRay adds the autoscaler container to the head
            autoscaler = spec.get("autoscalerOptions", {}).get("securityContext", {})
            if autoscaler.get("allowPrivilegeEscalation") is not False or \
                    "ALL" not in autoscaler.get("capabilities", {}).get("drop", []):
                errors.append(f"{kind} {name}: the autoscaler container may gain privileges")
    service = obj["spec"] if kind == "Service" else {}
    if service.get("type") not in (None, "ClusterIP") or service.get("externalIPs"):
        errors.append(f"Service {name}: reachable from outside the cluster")
    if kind in ("Ingress", "Route", "Gateway"):
        errors.append(f"{kind} {name}: exposes a Service outside the cluster")
    return errors


def test_every_pod_runs_as_its_images_non_root_user_without_privileges() -> None:
    pods = [(path, obj) for path, obj in all_objects() if pod_specs(obj)]
    assert {o["kind"] for _, o in pods} == {"RayCluster", "RayJob", "Deployment", "StatefulSet"}
    assert [e for _, obj in all_objects() for e in security_errors(obj)] == []
    assert image_users()["raynas"] == image_users()["raynas-mlflow"] == 1000


def test_the_security_check_catches_root_privileges_and_exposed_ports() -> None:
    cluster = _cluster()
    service = next(o for _, o in all_objects() if o["kind"] == "Service")

    def broken(obj: dict, change: Any) -> list[str]:
        copy_ = copy.deepcopy(obj)
        change(copy_)
        return security_errors(copy_)

    head = lambda o: o["spec"]["headGroupSpec"]  # noqa: E731
    head_pod = lambda o: o["spec"]["headGroupSpec"]["template"]["spec"]  # noqa: E731
    worker = lambda o: o["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]  # noqa: E731
    assert broken(cluster, lambda o: head_pod(o)["securityContext"].pop("runAsNonRoot"))
    assert broken(cluster, lambda o: head_pod(o)["securityContext"].update(runAsUser=0))
    assert broken(cluster, lambda o: head_pod(o)["securityContext"].update(runAsUser=1001))  # not the image's
    assert broken(cluster, lambda o: head_pod(o).update(hostNetwork=True))
    assert broken(cluster, lambda o: head_pod(o)["securityContext"].pop("seccompProfile"))
    unconfined = {"seccompProfile": {"type": "Unconfined"}}
    assert broken(cluster, lambda o: head_pod(o)["securityContext"].update(unconfined))
    assert broken(cluster, lambda o: worker(o)["securityContext"].update(allowPrivilegeEscalation=True))
    assert broken(cluster, lambda o: worker(o)["securityContext"].update(privileged=True))
    assert broken(cluster, lambda o: worker(o)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]))
    assert broken(cluster, lambda o: o["spec"]["autoscalerOptions"].pop("securityContext"))
    assert broken(cluster, lambda o: head(o).update(serviceType="LoadBalancer"))
    assert broken(cluster, lambda o: head(o).update(serviceType="NodePort"))
    assert broken(cluster, lambda o: head(o).update(enableIngress=True))
    assert broken(cluster, lambda o: head(o).update(headService={"spec": {"type": "NodePort"}}))
    assert broken(cluster, lambda o: head_pod(o)["containers"][0]["ports"][1].update(hostPort=8265))
    assert security_errors(service) == []
    assert broken(service, lambda o: o["spec"].update(type="LoadBalancer"))
    assert broken(service, lambda o: o["spec"].update(externalIPs=["203.0.113.7"]))
    assert security_errors({"kind": "Ingress", "metadata": {"name": "ray"}, "spec": {}})


def test_ray_dashboard_and_client_ports_are_served_inside_the_cluster_only() -> None:
    for path, obj in ray_objects():
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        if "headGroupSpec" not in spec:
            continue  # a RayJob on the long-lived cluster
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports = {p["containerPort"] for p in head["ports"]}
        assert {8265, 10001} <= ports, path.name
        assert spec["headGroupSpec"].get("serviceType") == "ClusterIP", path.name
    assert {o["kind"] for _, o in all_objects()} & {"Ingress", "Route", "Gateway"} == set()
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "port-forward svc/raynas-head-svc 8265:8265" in guide

# --- the cluster launcher ----------------------------------------------------------------------

LAUNCHER = sorted((CLUSTER / "launcher").glob("*.yaml"))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_passes_ray_up_validation(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_a100"]["min_worker"] = 0  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_launcher_has_heterogeneous_spot_gpu_types_named_as_in_kuberay() -> None:
    config = yaml.safe_load((CLUSTER / "launcher" / "aws.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = {name: t for name, t in types.items() if "GPU" in t["resources"]}
    found = set()
    for name, node in gpu.items():
        accelerator = node["labels"]["ray.io/accelerator-type"]
        found.add(accelerator)
        assert name == f"gpu_{accelerator.lower()}"
        assert node["resources"][accelerator] == node["resources"]["GPU"]
        assert node["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
        assert node["min_workers"] == 0 < node["max_workers"]
    assert found == set(ACCELERATORS)
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["image"] == f"raynas:{_project_version()}"
    # Settings reach the nodes from a file on the user's machine, loaded by `ray start`.
    assert all(". /home/ray/raynas.env" in " ".join(config[key])
               for key in ("head_start_ray_commands", "worker_start_ray_commands"))


def test_docs_name_the_same_gpu_resources() -> None:
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    for accelerator in ACCELERATORS:
        assert f"execution.accelerator={accelerator}" in guide or f'"{accelerator}": 1' in guide
        assert f"gpu-{accelerator.lower()}" in guide
    for path in MANIFESTS + LAUNCHER:
        assert str(path.relative_to(ROOT)) in guide, f"the guide does not mention {path.name}"


# --- the MLflow server's start script, run for real (SQLite and a local folder in place of
#     PostgreSQL and S3) ------------------------------------------------------------------------

def _request(url: str, *, host: str | None = None, auth: tuple[str, str] | None = None,
             body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if host:
        headers["Host"] = host
    if auth:
        headers["Authorization"] = "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0  # not listening yet


@pytest.mark.integration
def test_mlflow_start_script_serves_with_authentication(tmp_path: Path) -> None:
    objects = {o["metadata"]["name"]: o for o in documents(CLUSTER / "mlflow" / "mlflow.yaml")}
    script = objects["raynas-mlflow-start"]["data"]["start.sh"]
    settings = objects["raynas-mlflow-settings"]["data"]
    (tmp_path / "start.sh").write_text(script)
    port = free_port()
    env = {
        **os.environ, **{k: v for k, v in settings.items() if k != "MLFLOW_ARTIFACTS_DESTINATION"},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TMPDIR": str(tmp_path), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pass-1234",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(["sh", str(tmp_path / "start.sh")], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _request(f"{base}/health") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        service_host = f"raynas-mlflow.raynas.svc.cluster.local:{port}"
        assert _request(search, host=service_host) == 401  # no credentials
        assert _request(search, host=service_host, auth=("admin", "wrong")) == 401
        assert _request(search, host=service_host, auth=("admin", "admin-pass-1234")) == 200
        assert _request(search, host=f"raynas-mlflow:{port}", auth=("admin", "admin-pass-1234")) == 200
        assert _request(search, host="attacker.example", auth=("admin", "admin-pass-1234")) in (400, 403)
        # docs/kubernetes.md: the admin creates the user that the Ray pods log in as.
        create = f"{base}/api/2.0/mlflow/users/create"
        user = {"username": "raynas", "password": "raynas-pass-1234"}
        assert _request(create, host=service_host, auth=("admin", "admin-pass-1234"), body=user) == 200
        assert _request(search, host=service_host, auth=("raynas", "raynas-pass-1234")) == 200
        # The password is in the auth config written in the pod, never in the manifest.
        assert "admin-pass-1234" not in (CLUSTER / "mlflow" / "mlflow.yaml").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

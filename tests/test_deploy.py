"""The deployment files: the Dockerfile (hadolint, and what it must hold), the Kubernetes
manifests (Kubernetes' own schemas, kustomize's lists, settings that load), and the KEDA
objects (KEDA's documented schema, and a query that counts what the workers would claim).

No image can be built here (no base image can be pulled), and no cluster runs here: these
check the files as far as a machine without either can."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from workers import cli, overrides
from workers import settings as settings_module
from workers.app import App
from workers.headless import stop_wait

pytestmark = pytest.mark.tooling

DEPLOY = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for path in manifests() for doc in documents(path) if doc["kind"] == kind]


def core(path: Path) -> bool:
    """Kubernetes' own objects (kubernetes-validate has their schemas; KEDA's and the
    Prometheus Operator's are checked by their own tests)."""
    custom = ("keda.sh/", "monitoring.coreos.com/")
    return not any(doc["apiVersion"].startswith(custom) for doc in documents(path))


def deployment(component: str) -> dict[str, Any]:
    (found,) = [
        doc
        for doc in objects("Deployment")
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def configured_settings() -> dict[str, Any]:
    (config,) = objects("ConfigMap")
    return dict(json.loads(config["data"]["settings.json"]))


# --- the image -----------------------------------------------------------------------


@pytest.mark.processes
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_multi_stage_slim_non_root_and_checks_its_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) >= 2 and all(re.fullmatch(r"python:3\.\d+-slim.*", s) for s in stages)
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER (?!0\b|root\b)\S+", final, re.MULTILINE)
    assert "--no-index" in final  # installs the built wheels, fetches and compiles nothing
    assert not re.search(r"apt-get|gcc|build-essential", final)
    assert re.search(r'HEALTHCHECK .*\n?.*CMD \["workers", "health"\]', final)
    assert 'CMD ["workers", "worker"]' in final
    assert cli.parser().parse_args(["health"]).command == "health"


# --- the Kubernetes manifests --------------------------------------------------------


@pytest.mark.processes
@pytest.mark.parametrize("path", [p for p in manifests() if core(p)], ids=lambda p: p.name)
def test_each_core_manifest_passes_kubernetes_validate_strict(path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout and "Couldn't find schema" not in done.stdout + done.stderr


def test_every_manifest_is_in_a_kustomization_and_every_listed_file_exists() -> None:
    listed: set[Path] = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            target = (kustomization.parent / resource).resolve()
            assert target.exists(), f"{kustomization}: {resource} does not exist"
            listed.add(target)
    assert set(manifests()) <= listed


def test_the_grace_period_covers_the_workers_shutdown() -> None:
    settings = settings_module.validate(configured_settings())
    pod = deployment("headless")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == stop_wait(settings)


@pytest.mark.parametrize("component", ["headless", "web"])
def test_each_container_loads_its_settings_and_runs_a_command_of_ours(
    component: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap, the Secret's files and the container's environment, as the pod gets
    them, make valid settings; its command and exec probes parse as `workers` commands."""
    pod = deployment(component)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    files = _mounted_files(pod, mounts, tmp_path)
    for variable in container["env"]:
        value = variable["value"]
        monkeypatch.setenv(variable["name"], files.get(value, value))
    command = container["command"]
    assert command[0] == "workers"
    args = cli.parser().parse_args(command[1:])
    settings = settings_module.load()
    assert settings.mongo_url()  # from the Secret: never the embedded server in a pod
    if args.command == "web":
        assert settings.web.tokens  # `workers web --host 0.0.0.0` refuses to start without
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        exec_probe = container.get(probe, {}).get("exec")
        if exec_probe:
            assert cli.parser().parse_args(exec_probe["command"][1:]).command == "health"
            assert exec_probe["command"][0] == "workers"


def _mounted_files(pod: dict[str, Any], mounts: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Each file a pod would see at its mount path -> a file here with its content."""
    (config,) = objects("ConfigMap")
    (secret,) = objects("Secret")
    files: dict[str, str] = {}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            content = config["data"]
        elif "secret" in volume:
            content = secret["stringData"]
        else:
            continue
        for key, text in content.items():
            local = tmp_path / volume["name"] / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(text)
            files[f"{mounts[volume['name']]}/{key}"] = str(local)
    return files


# --- KEDA --------------------------------------------------------------------------

# KEDA's documented ScaledObject and TriggerAuthentication (keda.sh/docs/latest/reference/
# scaledobject-spec and concepts/authentication), and the MongoDB scaler's parameters
# (keda.sh/docs/latest/scalers/mongodb): the fields we use, with no others allowed.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {"type": "object"},
                "fallback": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRINGS,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {
            "type": "object",
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
# the MongoDB scaler's trigger metadata: required, and allowed
MONGODB_REQUIRED = {"dbName", "collection", "query", "queryValue"}
MONGODB_ALLOWED = MONGODB_REQUIRED | {
    "activationQueryValue", "connectionStringFromEnv", "scheme", "host", "port", "username",
    "passwordFromEnv",
}  # fmt: skip
MONGODB_AUTH_PARAMETERS = {"connectionString", "host", "port", "username", "password", "dbName"}


def test_the_keda_objects_follow_kedas_schema_and_the_mongodb_scalers_parameters() -> None:
    (scaled,) = objects("ScaledObject")
    (auth,) = objects("TriggerAuthentication")
    jsonschema.validate(scaled, SCALED_OBJECT)
    jsonschema.validate(auth, TRIGGER_AUTHENTICATION)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "mongodb"
    assert MONGODB_REQUIRED <= set(trigger["metadata"]) <= MONGODB_ALLOWED
    assert int(trigger["metadata"]["queryValue"]) >= 1
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in MONGODB_AUTH_PARAMETERS
        (secret,) = objects("Secret")
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment("headless")["metadata"]["name"]


def test_the_scalers_query_counts_the_ready_jobs_where_the_settings_put_them(
    app: App, db: Any
) -> None:
    """KEDA runs countDocuments(query) on dbName.collection: the ready jobs, as the
    ConfigMap's settings name the database and the collection."""
    (scaled,) = objects("ScaledObject")
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    configured = settings_module.validate(configured_settings())
    assert metadata["dbName"] == configured.mongo.database
    assert metadata["collection"] == f"{configured.mongo.prefix}.jobs"
    for _ in range(3):
        app.push_named("RecordJob", {})
    app.push_named("RecordJob", {}, after="in 1 hour")
    app.push_named("RecordJob", {}, depends=[str(app.push_named("RecordJob", {}))])
    query = json.loads(metadata["query"])
    counted = db[f"{app.settings.mongo.prefix}.jobs"].count_documents(query)
    assert counted == app.store.count_by_status()["ready"] == 4


def test_the_hpa_scales_on_a_metric_we_serve() -> None:
    (hpa,) = objects("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "workers_jobs"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"status": "ready"}
    source = (ROOT / "workers" / "web" / "metrics.py").read_text()
    assert '"workers_jobs", "Jobs by status and type", labels=["status", "type"]' in source
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment("headless")["metadata"]["name"]


def test_the_docs_deploy_with_commands_that_name_real_folders() -> None:
    readme = (ROOT / "docs" / "deploying.md").read_text()
    for line in re.findall(r"kubectl apply -k (\S+)", readme):
        assert (ROOT / shlex.split(line)[0] / "kustomization.yaml").exists(), line
    assert "kubectl apply -k deploy/kubernetes/keda" in readme


def _env(component: str) -> dict[str, str]:
    (container,) = deployment(component)["spec"]["template"]["spec"]["containers"]
    return {var["name"]: var.get("value", "") for var in container.get("env", [])}


def test_no_pod_mounts_a_service_account_token_and_only_the_proxies_reach_the_web() -> None:
    for component in ("web", "headless"):
        pod = deployment(component)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, component
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in objects("NetworkPolicy")}
    web, headless = policies["workers-web"], policies["workers-headless"]
    web_labels = deployment("web")["spec"]["template"]["metadata"]["labels"]
    assert web["podSelector"]["matchLabels"].items() <= web_labels.items()
    assert [port["port"] for rule in web["ingress"] for port in rule["ports"]] == ["http"]
    sources = [peer["namespaceSelector"]["matchLabels"] for peer in web["ingress"][0]["from"]]
    assert {"kubernetes.io/metadata.name": "monitoring"} in sources
    assert headless["policyTypes"] == ["Ingress"] and "ingress" not in headless


def test_behind_the_ingress_the_cookies_are_secure_and_the_proxy_is_believed() -> None:
    env = _env("web")
    assert env["WORKERS_WEB__SECURE_COOKIES"] == "true"
    assert env["WORKERS_WEB__FORWARDED_ALLOW"] == "*"
    read = overrides.read(settings_module.Settings, {
        name: value for name, value in env.items()
        if name.startswith("WORKERS_WEB__") and not name.endswith("_FILE")
    })  # fmt: skip
    assert read.values["web"]["secure_cookies"] is True
    assert read.values["web"]["forwarded_allow"] == ["*"]


def test_prometheus_scrapes_the_web_service_with_the_secrets_metrics_token() -> None:
    """The ServiceMonitor's endpoint is a named port of the web Service, its token a key of
    the Secret, and that token's SHA-256 a reader entry of web-tokens."""
    import hashlib

    (monitor,) = objects("ServiceMonitor")
    (service,) = [s for s in objects("Service") if s["metadata"]["name"] == "workers-web"]
    (secret,) = objects("Secret")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert credentials["name"] == secret["metadata"]["name"]
    token = secret["stringData"][credentials["key"]]
    entries = json.loads(secret["stringData"]["web-tokens"])
    (entry,) = [e for e in entries if e["sha256"] == hashlib.sha256(token.encode()).hexdigest()]
    assert entry["role"] in ("viewer", "manager", "admin")
    assert not any("prometheus.io" in str(d["spec"]["template"]["metadata"]) for d in
                   objects("Deployment"))  # fmt: skip

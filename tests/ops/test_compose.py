"""docker-compose.yml, parsed with PyYAML and cross-checked against the files it wires together.

No Docker engine runs here, so the stack is checked for the mistakes that would break
``docker compose up``: services, ports and volumes that do not line up, environment variable
names that differ from what the config files read (token_env, dsn_env, the AWS variables),
missing healthchecks, mounted files that are not in the repository, a config that does not load
with the environment compose gives it. Compose's own variable interpolation is reproduced
(``${VAR:-default}``, ``$$``) with the demo defaults, as with no ``.env`` file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml

from scorebeater.config import Config, load_config
from tests.ops import COMPOSE_FILE, PROMETHEUS_CONFIG, REPO

if TYPE_CHECKING:
    from collections.abc import Mapping

STORAGE_VARIANTS = ("local", "s3", "postgres")
DAEMONS = ("scorebeater-1", "scorebeater-2")
"""Two replicas of the daemon over one store: a leader and a standby."""
MODEL_SERVERS = ("tfserving-1", "tfserving-2")
LONG_RUNNING = ("scoreapi", *MODEL_SERVERS, "postgres", "minio", *DAEMONS, "prometheus", "grafana")
REPLICAS = {"scorebeater": DAEMONS, "tfserving": MODEL_SERVERS}
ONE_SHOT = ("trainer", "minio-init")
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a service must listen on inside its container
_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation over a parsed document: ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}``, ``${VAR:+alt}`` and ``$$`` (a literal ``$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:  # noqa: PLR0911 - one branch per compose operator
        if match.group() == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        present = name in env
        nonempty = bool(env.get(name))
        if op == ":-":
            return env[name] if nonempty else arg
        if op == "-":
            return env[name] if present else arg
        if op in (":?", "?"):
            if not (nonempty if op == ":?" else present):
                raise AssertionError(f"compose would refuse to start: ${{{name}}} unset ({arg})")
            return env[name]
        if op == ":+":
            return arg if nonempty else ""
        if op == "+":
            return arg if present else ""
        return env.get(name, "")

    return _VAR.sub(one, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the <<: merge keys as compose does
    doc: dict[str, Any] = interpolate({k: v for k, v in raw.items() if not k.startswith("x-")}, env or {})
    return doc


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _environment(service: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment; ``scorebeater`` or ``tfserving`` names the replicas' (one for all:
    test_replicas_are_the_same_service_on_other_host_ports)."""
    svc = load_compose(env)["services"][REPLICAS.get(service, (service,))[0]]
    environment = svc.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def _published(service: str) -> dict[int, str]:
    """container port -> host binding ("127.0.0.1:8080")."""
    out: dict[int, str] = {}
    for spec in SERVICES[service].get("ports", []):
        host_ip, host_port, container = str(spec).rsplit(":", 2)
        out[int(container)] = f"{host_ip}:{host_port}"
    return out


def _mounts(service: str) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read_only) for the short volume syntax."""
    out: dict[str, tuple[str, bool]] = {}
    for spec in SERVICES[service].get("volumes", []):
        parts = str(spec).split(":")
        source, target = parts[0], parts[1]
        out[target] = (source, len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def _command_config(storage: str, service: str = DAEMONS[0]) -> tuple[Path, Config, dict[str, str]]:
    """The config file a daemon replica runs with for a storage variant, loaded with its env."""
    env = {"SCOREBEATER_STORAGE": storage}
    svc = load_compose(env)["services"][service]
    command = svc["command"]
    assert command[:2] == ["run", "--config"], command
    container_path = command[2]
    config_mount = _mounts(service)["/app/config"][0]
    host_path = (REPO / config_mount / Path(container_path).relative_to("/app/config")).resolve()
    service_env = _environment(service, env)
    return host_path, load_config(host_path, env=service_env), service_env


def _aliases(service: str) -> set[str]:
    """Other names a service answers to on the default network."""
    networks = SERVICES[service].get("networks") or {}
    default = (networks.get("default") or {}) if isinstance(networks, dict) else {}
    return set(default.get("aliases", []))


def test_services() -> None:
    assert set(SERVICES) == set(LONG_RUNNING) | set(ONE_SHOT)
    for name in ONE_SHOT:
        assert SERVICES[name].get("restart") == "no", name


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_long_running_services_have_healthchecks(service: str) -> None:
    check = SERVICES[service].get("healthcheck", {})
    assert not check.get("disable"), service
    test = check.get("test")
    assert isinstance(test, list), service
    assert test[0] in {"CMD", "CMD-SHELL"}, service
    assert len(test) > 1, service
    assert SERVICES[service].get("restart") == "unless-stopped", service


def test_images_are_pinned() -> None:
    for name, svc in SERVICES.items():
        image = svc["image"]
        if "build" in svc:
            assert image.startswith("scorebeater"), name
            assert svc["build"]["context"] == "."
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, name
        assert tag not in {"", "latest"}, f"{name}: pin {image!r}"


def test_published_ports_are_loopback_only() -> None:
    for name in SERVICES:
        for container_port, binding in _published(name).items():
            assert binding.startswith("127.0.0.1:"), f"{name}:{container_port} published on {binding}"


def test_daemon_image_targets() -> None:
    for daemon in DAEMONS:
        assert SERVICES[daemon]["build"]["target"] == "runtime"
    assert SERVICES["scoreapi"]["build"]["target"] == "runtime"
    assert SERVICES["trainer"]["build"]["target"] == "model"  # tensorflow-cpu only where it trains
    dockerfile_stages = re.findall(r"^FROM \S+ AS (\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    for name in (*DAEMONS, "scoreapi", "trainer"):
        assert SERVICES[name]["build"]["target"] in dockerfile_stages


@pytest.mark.parametrize("storage", STORAGE_VARIANTS)
def test_replicas_are_the_same_service_on_other_host_ports(storage: str) -> None:
    """The two daemons run one config over one store (the store elects the leader), and the two
    model servers serve the same files; each replica publishes its own loopback port."""
    env = {"SCOREBEATER_STORAGE": storage}
    services = load_compose(env)["services"]
    for group in (DAEMONS, MODEL_SERVERS):
        first, *others = (services[name] for name in group)
        for other in others:
            assert {k: v for k, v in other.items() if k != "ports"} == {
                k: v for k, v in first.items() if k != "ports"
            }
        published = [binding for name in group for binding in _published(name).values()]
        assert len(set(published)) == len(published), f"{group}: two replicas on one host port"
    paths = {_command_config(storage, daemon)[0] for daemon in DAEMONS}
    assert len(paths) == 1
    if storage == "local":
        # Local storage is single-process: the compose file says how to run one replica.
        assert "--scale scorebeater-2=0" in COMPOSE_FILE.read_text()


@pytest.mark.parametrize("storage", STORAGE_VARIANTS)
def test_daemon_config_loads_with_the_compose_environment(storage: str) -> None:
    """The config file each SCOREBEATER_STORAGE selects exists and loads with exactly what compose sets."""
    path, cfg, env = _command_config(storage)
    assert path.is_file(), path
    assert cfg.storage.backend == storage
    # Every environment variable a config names is one compose sets.
    for var in (cfg.score_api.token_env, cfg.admin.token_env):
        if var:
            assert var in env, f"{path.name} names {var}, which compose does not set"
    if storage == "postgres":
        assert cfg.storage.postgres.dsn_env in env
        dsn = urlsplit(env[cfg.storage.postgres.dsn_env])
        pg_env = _environment("postgres")
        assert dsn.hostname == "postgres"
        assert dsn.port == 5432
        assert dsn.username == pg_env["POSTGRES_USER"]
        assert dsn.password == pg_env["POSTGRES_PASSWORD"]
        assert dsn.path.lstrip("/") == pg_env["POSTGRES_DB"]
    if storage == "s3":
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env.get(var), f"the S3 backend needs {var}"
        minio_env = _environment("minio")
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
        endpoint = urlsplit(cfg.storage.s3.endpoint_url)
        assert (endpoint.hostname, endpoint.port) == ("minio", 9000)
        assert cfg.storage.s3.addressing_style == "path"
        assert _environment("minio-init")["SCOREBEATER_S3_BUCKET"] == cfg.storage.s3.bucket
        assert "mb --ignore-existing" in SERVICES["minio-init"]["command"][0]
    if storage == "local":
        assert cfg.storage.local.root.is_relative_to("/app/var")  # the `state` volume


@pytest.mark.parametrize("storage", STORAGE_VARIANTS)
def test_daemon_config_wires_the_services(storage: str) -> None:
    _, cfg, env = _command_config(storage)
    score_api = urlsplit(cfg.score_api.base_url)
    assert score_api.hostname == "scoreapi"
    scoreapi_cmd = SERVICES["scoreapi"]["command"]
    assert scoreapi_cmd[0] == "replay-api"
    assert score_api.port == int(scoreapi_cmd[scoreapi_cmd.index("--port") + 1])
    assert scoreapi_cmd[scoreapi_cmd.index("--host") + 1] == ALL_INTERFACES
    assert not cfg.score_api.replay.enabled
    assert not cfg.model_server.enabled
    # The replay server checks the token from the same variable the daemon sends it from.
    assert cfg.score_api.token_env == "SCOREBEATER_SCORE_API_TOKEN"
    assert _environment("scoreapi")[cfg.score_api.token_env] == env[cfg.score_api.token_env]

    # Every TF Serving replica, each once, on the REST port it listens on.
    replicas = [urlsplit(url) for url in cfg.tfserving.base_urls]
    assert sorted(u.hostname or "" for u in replicas) == sorted(MODEL_SERVERS)
    for url in replicas:
        assert f"--rest_api_port={url.port}" in SERVICES[url.hostname or ""]["command"]

    assert cfg.admin.host == ALL_INTERFACES
    assert cfg.admin.port == 8080
    for daemon in DAEMONS:
        assert 8080 in _published(daemon)
    assert env["SCOREBEATER_HEALTHCHECK_URL"] == f"http://127.0.0.1:{cfg.admin.port}/healthz"
    assert not cfg.training.retrain_on_season_final, "the runtime image has no TensorFlow to retrain with"
    written = [cfg.training.report_dir] + ([cfg.storage.local.root] if storage == "local" else [])
    for path in written:
        # Relative paths resolve against the image's WORKDIR, /app.
        assert (Path("/app") / path).is_relative_to("/app/var"), f"{path}: not on a writable volume"


def test_model_volume_is_shared_by_trainer_tfserving_and_daemon() -> None:
    daemon_cfg = _command_config("s3")[1]
    for daemon in DAEMONS:
        assert _mounts(daemon)["/app/model"][0] == "model"
    assert _mounts("trainer")["/app/model"] == ("model", False)  # the trainer publishes versions
    for server in MODEL_SERVERS:
        source, read_only = _mounts(server)["/models"]
        assert source == "model"
        assert read_only
        assert SERVICES[server]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert daemon_cfg.model.base_path == Path("/app/model") / daemon_cfg.model.name
    assert "model" in COMPOSE["volumes"]
    assert "state" in COMPOSE["volumes"]
    trainer_script = SERVICES["trainer"]["command"][0]
    assert "scorebeater train --config /app/config/" in trainer_script
    trainer_config = REPO / "config" / re.search(r"/app/config/(\S+\.toml)", trainer_script).group(1)  # type: ignore[union-attr]
    trained = load_config(trainer_config, env=_environment("trainer"))
    assert trained.model.base_path == daemon_cfg.model.base_path


def test_every_mounted_file_exists() -> None:
    for name in SERVICES:
        for target, (source, _) in _mounts(name).items():
            if not source.startswith((".", "/")):
                assert source in COMPOSE["volumes"], f"{name}: undeclared volume {source!r}"
                continue
            path = (REPO / source).resolve()
            assert path.exists(), f"{name} mounts {source} at {target}, which is not in the repository"


def _host_path(service: str, container_path: str) -> tuple[Path, bool] | None:
    """The repository path a bind mount of ``service`` shows at ``container_path`` (a mounted
    file, or a file inside a mounted directory), and whether it is read-only."""
    for target, (source, read_only) in _mounts(service).items():
        if not source.startswith("."):
            continue
        if container_path == target or Path(container_path).is_relative_to(target):
            return (REPO / source / Path(container_path).relative_to(target)).resolve(), read_only
    return None


@pytest.mark.parametrize("server", MODEL_SERVERS)
def test_tfserving_flags_name_its_mounted_files(server: str) -> None:
    for flag in SERVICES[server]["command"]:
        key, _, value = flag.partition("=")
        if key in {"--model_config_file", "--monitoring_config_file", "--batching_parameters_file"}:
            mounted = _host_path(server, value)
            assert mounted is not None, f"{flag}: not mounted"
            assert mounted[0].is_file(), f"{flag}: {mounted[0]} is not in the repository"
            assert mounted[1], f"{value}: mount it read-only"
    assert "--enable_batching" in SERVICES[server]["command"]  # required by --batching_parameters_file


def test_the_daemon_rewrites_the_models_config_tfserving_polls() -> None:
    """Promotion: the daemon's models_config is the very file TF Serving reads, mounted writable
    for the daemon, and through a directory mount on both sides (an atomic rename replaces the
    file's inode, which a single-file bind mount would never see)."""
    served = set()
    for server in MODEL_SERVERS:
        flag = next(f for f in SERVICES[server]["command"] if f.startswith("--model_config_file="))
        mounted = _host_path(server, flag.partition("=")[2])
        assert mounted is not None
        served.add(mounted[0])
    assert len(served) == 1, "every TF Serving replica polls the same models.config"
    for storage in STORAGE_VARIANTS:
        for daemon in DAEMONS:
            cfg = _command_config(storage, daemon)[1]
            assert cfg.tfserving.models_config is not None, f"{storage}: [tfserving] models_config is not set"
            written = _host_path(daemon, str(cfg.tfserving.models_config))
            assert written is not None, f"{storage}: {cfg.tfserving.models_config} is not mounted"
            assert written == (*served, False), f"{storage}: the daemon must write the file tfserving reads"
    for service in (*MODEL_SERVERS, *DAEMONS):
        for target, (source, _) in _mounts(service).items():
            assert not source.endswith("models.config"), f"{service}: mount the directory, not {target}"


def test_tfserving_files_agree_with_the_stack() -> None:
    """models.config serves score_beater from the shared volume; monitoring.config enables the
    Prometheus path Prometheus scrapes; the daemon's batches fit the server's max_batch_size."""
    tf_dir = REPO / "tfserving"
    models = tf_dir / "models.config"
    monitoring = tf_dir / "monitoring.config"
    batching = tf_dir / "batching_parameters.txt"
    for path in (models, monitoring, batching):
        assert path.is_file(), f"{path} is missing"
    cfg = _command_config("s3")[1]
    text = models.read_text()
    assert re.search(rf"""name:\s*["']{cfg.model.name}["']""", text), "models.config does not serve the model"
    base = re.search(r"""base_path:\s*["']([^"']+)["']""", text)
    assert base, "models.config sets no base_path"
    assert base.group(1) == f"/models/{cfg.model.name}", "base_path must be in the shared volume at /models"
    if cfg.tfserving.version_label:
        assert re.search(rf"""key:\s*["']{cfg.tfserving.version_label}["']""", text), (
            "label not in models.config"
        )
    prom = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    path = next(j["metrics_path"] for j in prom["scrape_configs"] if j["job_name"] == "tfserving")
    mon = monitoring.read_text()
    assert re.search(r"enable:\s*true", mon)
    declared = re.search(r"""path:\s*["']([^"']*)["']""", mon)
    assert declared is None or declared.group(1) in ("", path)
    max_batch = re.search(r"max_batch_size\s*\{\s*value:\s*(\d+)", batching.read_text())
    assert max_batch, "batching_parameters.txt sets no max_batch_size"
    for storage in STORAGE_VARIANTS:
        assert _command_config(storage)[1].tfserving.max_batch_size <= int(max_batch.group(1))


def test_prometheus_and_grafana_mounts() -> None:
    prom = _mounts("prometheus")
    assert prom["/etc/prometheus/prometheus.yml"] == ("./config/prometheus/prometheus.yml", True)
    assert prom["/etc/prometheus/alerts.yml"] == ("./config/prometheus/alerts.yml", True)
    command = SERVICES["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert scrape["rule_files"] == ["alerts.yml"]  # relative to the config file: /etc/prometheus/alerts.yml
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for target in targets - {"localhost:9090"}:
        host, port = target.split(":")
        # A service's name, or an alias every replica of it answers to.
        answering = [name for name in SERVICES if host == name or host in _aliases(name)]
        assert answering, f"Prometheus scrapes {target}: no such service"
        for name in answering:
            assert int(port) in _listening_ports(name), (
                f"Prometheus scrapes {target}: {name} does not listen there"
            )
    grafana = _mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == ("./config/grafana/provisioning", True)
    assert grafana["/etc/grafana/dashboards/scorebeater"] == ("./config/grafana/dashboards", True)
    home = _environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "config/grafana/dashboards" / Path(home).name).is_file()
    assert home.startswith("/etc/grafana/dashboards/scorebeater/")


def _listening_ports(service: str) -> set[int]:
    """The ports a service's own configuration makes it listen on inside the network."""
    if service in DAEMONS:
        return {_command_config("s3", service)[1].admin.port}
    if service in MODEL_SERVERS:
        return {
            int(f.split("=")[1]) for f in SERVICES[service]["command"] if f.startswith("--rest_api_port=")
        }
    return set(_published(service))


def test_dependencies_wait_for_health() -> None:
    for daemon in DAEMONS:
        depends = SERVICES[daemon]["depends_on"]
        assert depends["scoreapi"]["condition"] == "service_healthy"
        for server in MODEL_SERVERS:
            assert depends[server]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert SERVICES["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name, svc in SERVICES.items():
        for dep in svc.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"


def test_no_secret_is_written_into_the_compose_file() -> None:
    """Secrets come from the environment (or .env): literal values only as ${VAR:-demo} defaults."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    secretish = re.compile(r"(TOKEN|PASSWORD|SECRET|DSN|ACCESS_KEY)")
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secretish.search(key) and key != "SCOREBEATER_S3_BUCKET":
                assert "${" in str(value), f"{name}.{key}: take it from the environment"


def test_interpolation() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("x${A}y$A $$A ${B:-d} ${E:-d} ${E-d} ${A:+alt} ${B+alt}", env) == "x1y1 $A d d  alt "
    with pytest.raises(AssertionError, match="refuse"):
        interpolate("${B:?set B}", env)


def test_storage_variants_are_documented() -> None:
    example = (REPO / "config" / "compose.env.example").read_text()
    assert "SCOREBEATER_STORAGE=" in example
    compose_vars = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text()))
    example_vars = {line.split("=", 1)[0] for line in example.splitlines() if re.match(r"^[A-Z_]+=", line)}
    assert compose_vars - {"SCOREBEATER_TAG"} <= example_vars, (
        "document every variable in compose.env.example"
    )

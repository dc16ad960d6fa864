"""docker-compose.yml agrees with the code: commands name real modules, every SB_* variable is one
the service reads, the image is built from deploy/docker/Dockerfile, Prometheus scrapes each
service where compose puts it, and the gateway can reach the providers its policy names."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest
import yaml

from services import catalog
from shared.policy import load_dir_or_raise
from shared.settings import Settings
from tests.support.servers import nats_server_binary
from tests.support.stack import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTINGS = {f"services.{e.name}": e.settings_class for e in catalog.SERVICES} | {"shared.migrate": Settings}
SWITCHBOARD = catalog.NAMES


def module_of(service: dict) -> str | None:
    command = service.get("command")
    if isinstance(command, list) and command[:2] == ["python", "-m"] and len(command) == 3:
        return command[2]
    return None


def sb_env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith("SB_")}


def healthcheck_vars(service: dict) -> set[str]:
    """SB_* variables the service's own healthcheck command reads inside the container."""
    test = (service.get("healthcheck") or {}).get("test") or []
    return set(re.findall(r"SB_[A-Z0-9_]+", " ".join(map(str, test))))


def policy_vars() -> set[str]:
    """Variables the policy files expand (`${VAR}`) or name as credentials; every service loads them."""
    text = "".join(p.read_text() for p in (REPO / "config").glob("*.yaml"))
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)) | set(re.findall(r"api_key_env:\s*(\w+)", text))


def settings_vars(cls) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


PYTHON_SERVICES = sorted(name for name, svc in SERVICES.items() if module_of(svc))


def test_every_switchboard_service_is_in_compose():
    assert set(SWITCHBOARD) | {"simulator", "migrate"} <= set(PYTHON_SERVICES)
    for name in SWITCHBOARD:
        assert module_of(SERVICES[name]) == f"services.{name}"


@pytest.mark.parametrize("name", PYTHON_SERVICES)
def test_command_names_an_existing_module(name):
    module = module_of(SERVICES[name])
    path = REPO.joinpath(*module.split("."))

    assert (path / "__main__.py").is_file() or path.with_suffix(".py").is_file(), module


@pytest.mark.parametrize(
    "name",
    [n for n in PYTHON_SERVICES if n != "simulator"],
)
def test_every_sb_variable_is_a_settings_field(name):
    service = SERVICES[name]
    known = settings_vars(SETTINGS[module_of(service)]) | healthcheck_vars(service) | policy_vars()

    unknown = set(sb_env(service)) - known

    assert unknown == set(), f"{name} sets {sorted(unknown)}, which nothing in it reads"


def test_simulator_sb_sim_variables_are_the_ones_it_reads():
    service = SERVICES["simulator"]
    source = (REPO / "services" / "simulator" / "__main__.py").read_text()
    read = set(re.findall(r"os\.environ\.get\(\s*\"(SB_SIM_[A-Z0-9_]+)\"", source))
    assert read >= {"SB_SIM_HOST", "SB_SIM_PORT"}

    assert {k for k in sb_env(service) if k.startswith("SB_SIM_")} <= read
    assert sb_env(service)["SB_SIM_HOST"] == "0.0.0.0"  # reachable from the other containers


def test_switchboard_settings_have_a_distinct_default_port_matching_compose():
    for name in SWITCHBOARD:
        cls = SETTINGS[f"services.{name}"]
        assert int(sb_env(SERVICES[name])["SB_HTTP_PORT"]) == cls.model_fields["http_port"].default, name
    assert len({int(sb_env(SERVICES[n])["SB_HTTP_PORT"]) for n in SWITCHBOARD}) == len(SWITCHBOARD)


def test_image_is_built_from_the_dockerfile():
    dockerfile = REPO / "deploy" / "docker" / "Dockerfile"
    assert dockerfile.is_file()
    assert "FROM python:3.11" in dockerfile.read_text()
    for name in PYTHON_SERVICES:
        build = SERVICES[name]["build"]
        assert (REPO / build["context"]).resolve() == REPO, name
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == dockerfile.resolve(), name


def test_prometheus_scrapes_each_service_port_from_compose():
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for name in SWITCHBOARD:
        port = sb_env(SERVICES[name])["SB_HTTP_PORT"]
        assert f"{name}:{port}" in targets, name
        assert sb_env(SERVICES[name]).get("SB_HTTP_HOST") == "0.0.0.0", f"{name} binds loopback only"
    assert "prometheus" in SERVICES
    mounted = " ".join(SERVICES["prometheus"]["volumes"])
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounted


def test_healthcheck_port_is_the_service_port():
    for name in SWITCHBOARD:
        env = sb_env(SERVICES[name])
        assert "SB_HTTP_PORT" in healthcheck_vars(SERVICES[name]), name
        port = env["SB_HTTP_PORT"]
        assert f"127.0.0.1:{port}:{port}" in SERVICES[name].get("ports", []), name


def gateway_policy(monkeypatch):
    """The example policy as the gateway container loads it: with compose's environment only."""
    for key in [k for k in os.environ if k.startswith("SB_")]:
        monkeypatch.delenv(key)
    env = sb_env(SERVICES["gateway"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_dir_or_raise(REPO / "config"), env


def test_gateway_in_compose_points_providers_at_the_simulator_service(monkeypatch):
    policy, _ = gateway_policy(monkeypatch)

    hosts = {name: urlsplit(spec.base_url).hostname for name, spec in policy.providers.items()}

    assert hosts == dict.fromkeys(policy.providers, "simulator")


def test_gateway_in_compose_has_every_api_key_its_policy_names(monkeypatch):
    policy, env = gateway_policy(monkeypatch)

    needed = {spec.api_key_env for spec in policy.providers.values() if spec.api_key_env}

    assert needed - set(env) == set()


def test_services_export_spans_to_the_jaeger_in_compose_which_keeps_them():
    jaeger = SERVICES["jaeger"]
    config_path = "./deploy/jaeger/config.yaml"
    assert f"{config_path}:/etc/jaeger/config.yaml:ro" in jaeger["volumes"]
    assert jaeger["command"] == ["--config", "/etc/jaeger/config.yaml"]
    config = yaml.safe_load((REPO / config_path).read_text())
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    for name in SWITCHBOARD:
        assert (
            SERVICES[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
            == f"http://jaeger:{http.split(':')[-1]}"
        )
        assert "OTEL_SERVICE_NAME" not in SERVICES[name]["environment"], name
    # Persistent (a named volume holding the Badger directories), with retention set.
    [volume] = [v for v in jaeger["volumes"] if not v.startswith("./")]
    name, mount = volume.split(":")
    assert name in COMPOSE["volumes"]
    [store] = config["extensions"]["jaeger_storage"]["backends"].values()
    badger = store["badger"]
    assert badger["ephemeral"] is False
    assert all(d.startswith(mount + "/") for d in badger["directories"].values())
    assert badger["ttl"]["spans"] == "2160h"
    assert (
        config["extensions"]["jaeger_query"]["storage"]["traces"]
        in config["extensions"]["jaeger_storage"]["backends"]
    )
    assert "127.0.0.1:16686:16686" in jaeger["ports"]


def test_authentication_is_on_and_ports_are_on_loopback():
    assert "POSTGRES_HOST_AUTH_METHOD" not in SERVICES["postgres"]["environment"]
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/secrets/")
    assert "--aclfile" in SERVICES["redis"]["command"]
    assert SERVICES["nats"]["command"] == ["-c", "/secrets/nats/server.conf"]
    for name in SWITCHBOARD:
        env = sb_env(SERVICES[name])
        assert env["SB_NATS_CREDENTIALS_DIR"] == "/secrets/nats", name
        assert env["SB_REDIS_PASSWORD_FILE"] and env["SB_DATABASE_PASSWORD_FILE"], name
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_dev_secrets_make_a_valid_nats_server_configuration(tmp_path):
    import subprocess
    import sys

    script = REPO / "deploy" / "docker" / "dev_secrets.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    first = (tmp_path / "nats" / "gateway").read_text()
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)

    assert (tmp_path / "nats" / "gateway").read_text() == first  # made once, then kept
    assert (
        f">{(tmp_path / 'redis' / 'password').read_text().strip()} "
        in (tmp_path / "redis" / "users.acl").read_text()
    )
    assert len((tmp_path / "postgres" / "password").read_text().strip()) >= 24
    check = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats" / "server.conf")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_other_listening_port_is_set_and_published_as_its_settings_default():
    for entry in catalog.SERVICES:
        env = sb_env(SERVICES[entry.name])
        for field in entry.other_ports:
            port = entry.ports[field]
            assert int(env[f"SB_{field.upper()}"]) == port, (entry.name, field)
            assert f"127.0.0.1:{port}:{port}" in SERVICES[entry.name].get("ports", []), (entry.name, field)

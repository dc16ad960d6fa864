"""The Kubernetes overlays render with `kubectl kustomize` and every object is valid against the
Kubernetes schemas (kubernetes-validate); each service has what production needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services import catalog

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("staging", "prod")
SERVICES = catalog.NAMES
AUTOSCALED = {"gateway", "router", "budget", "hitl", "ingress"}
KUBERNETES_VERSION = "1.29.0"  # validated against this API; old enough for most clusters in use


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl not found: deploy/local/infra.sh installs Debian's kubernetes-client", pytrace=False
        )
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered):
    _, docs = rendered
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert len(docs) >= 1 + 1 + 2 * len(SERVICES) + len(AUTOSCALED)


def test_an_invalid_object_is_caught():  # the check above can fail
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "2"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_each_service_has_probes_resources_scraping_and_file_secrets(rendered):
    overlay, docs = rendered
    deployments = of_kind(docs, "Deployment")
    pdbs, hpas = of_kind(docs, "PodDisruptionBudget"), of_kind(docs, "HorizontalPodAutoscaler")
    assert set(deployments) == {f"switchboard-{s}" for s in SERVICES}
    assert set(pdbs) == set(deployments)
    assert set(hpas) == {f"switchboard-{s}" for s in AUTOSCALED}
    for name, deployment in deployments.items():
        assert deployment["metadata"]["namespace"] == f"switchboard-{overlay}"
        pod = deployment["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        (container,) = pod["spec"]["containers"]
        port = container["ports"][0]["containerPort"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }, name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        assert container["image"].startswith("registry.example.internal/switchboard:")
        env = {e["name"]: e.get("value") for e in container["env"]}
        role = name.removeprefix("switchboard-")
        assert env["SB_NATS_PASSWORD_FILE"] == f"/var/run/secrets/switchboard/nats-{role}"
        (secret,) = [v["secret"] for v in pod["spec"]["volumes"] if "secret" in v]
        keys = {i["key"] for i in secret["items"]}
        assert f"nats-{role}" in keys and not any(
            k.startswith("nats-") and k != f"nats-{role}" and k != "nats-ca.crt" for k in keys
        )
        assert not any("valueFrom" in e and "PASSWORD" in e["name"] for e in container["env"])
    settings = of_kind(docs, "ConfigMap")["switchboard-settings"]["data"]
    assert settings["SB_ENV"] == overlay
    assert not any(word in value for value in settings.values() for word in (":@", "password"))

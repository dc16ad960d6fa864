"""The one list of Switchboard's services, in start order (the gateway last: it needs the rest).

`make run` (deploy/local/run.py), the benchmark (bench/stack.py), the tests (tests/support) and
the compose and Prometheus checks all read it; each service's ports are its settings' defaults.
The provider simulator is not here: it is a stand-in for the outside world, not a service.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceEntry:
    name: str  # `python -m services.<name>`; its settings and service classes in services/<name>/service.py
    class_prefix: str
    other_ports: tuple[str, ...] = ()  # settings fields of further listening ports (SB_<FIELD>)

    def _attr(self, suffix: str):
        return getattr(importlib.import_module(f"services.{self.name}.service"), self.class_prefix + suffix)

    @property
    def service_class(self):
        return self._attr("Service")

    @property
    def settings_class(self):
        return self._attr("Settings")

    @property
    def ports(self) -> dict[str, int]:
        """Settings field -> default port: `http_port` (/healthz, /readyz, /metrics) and the others."""
        fields = self.settings_class.model_fields
        return {f: fields[f].default for f in ("http_port", *self.other_ports)}


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry("recorder", "Recorder"),
    ServiceEntry("router", "Router"),
    ServiceEntry("budget", "Budget"),
    ServiceEntry("hitl", "Hitl", other_ports=("api_port",)),
    ServiceEntry("ingress", "Ingress", other_ports=("api_port",)),
    ServiceEntry("gateway", "Gateway"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)


def entry(name: str) -> ServiceEntry:
    return next(s for s in SERVICES if s.name == name)

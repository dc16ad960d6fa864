"""A readable difference between two policy documents, per provider and per workflow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    section: str  # providers | workflows
    name: str
    change: str  # added | removed | changed
    path: str = ""  # the field inside the entry, e.g. tiers.0.timeout_ms
    before: object = None
    after: object = None

    def __str__(self) -> str:
        where = f"{self.section}.{self.name}"
        if self.change != "changed":
            return f"{where}: {self.change}"
        return f"{where}.{self.path}: {_show(self.before)} -> {_show(self.after)}"


def diff(before: dict, after: dict) -> list[Difference]:
    """Every difference between two policies, section by section, name by name, field by field."""
    out: list[Difference] = []
    for section in ("providers", "workflows"):
        a, b = before.get(section, {}), after.get(section, {})
        for name in sorted(set(a) | set(b)):
            if name not in b:
                out.append(Difference(section, name, "removed"))
            elif name not in a:
                out.append(Difference(section, name, "added"))
            else:
                out += [
                    Difference(section, name, "changed", path, x, y)
                    for path, x, y in _fields(a[name], b[name], "")
                ]
    return out


def workflow_changed(before: dict | None, after: dict, workflow: str) -> str | None:
    """How `workflow`'s effective policy (its spec and the providers its tiers use) changed."""
    if before is None:
        return "added" if workflow in after["workflows"] else None
    old, new = effective(before, workflow), effective(after, workflow)
    if old == new:
        return None
    if old is None:
        return "added"
    return "removed" if new is None else "changed"


def effective(policy: dict, workflow: str) -> dict | None:
    """A workflow's spec with the providers its tiers name: everything that decides its calls."""
    spec = policy["workflows"].get(workflow)
    if spec is None:
        return None
    used = {t["provider"] for t in spec["tiers"]}
    return {"workflow": spec, "providers": {p: policy["providers"].get(p) for p in sorted(used)}}


def _fields(a: object, b: object, path: str):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from _fields(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _fields(x, y, f"{path}.{i}" if path else str(i))
    elif a != b:
        yield path, a, b


def _show(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict) and {"provider", "model"} <= value.keys():
        return f"{value['provider']}/{value['model']}"
    return "-" if value is None else str(value)

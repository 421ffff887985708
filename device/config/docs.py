"""The config's documentation, generated from the sections' field metadata: the README's
table of every key (:func:`schema_reference`) and a commented config.yaml
(:func:`commented_yaml`, used by systemd/install.sh)."""

from typing import Any

import yaml

from device.config.fields import Key, Section, join, schema_of
from device.config.loader import Config


def _flow(value: Any, **kwargs: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, **kwargs).strip().removesuffix("...").strip()
    )


def _is_section(item: Any) -> bool:
    return isinstance(item, type) and issubclass(item, Section)


def schema_reference() -> str:
    """Markdown table of every key, its default and meaning (for the README)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(cls: type[Section], path: str) -> None:
        for name, spec in schema_of(cls).items():
            key_path = join(path, name)
            if isinstance(spec, type):
                walk(spec, key_path)
            else:
                rows.append(f"| `{key_path}` | `{_flow(spec.default)}` | {spec.doc} |")
                if _is_section(spec.item):
                    walk(spec.item, key_path + "[]")

    walk(Config, "")
    return "\n".join(rows)


def commented_yaml(overrides: dict | None = None) -> str:
    """Every key with its default (or an override) and its meaning as a comment above it."""
    lines: list[str] = []

    def walk(cls: type[Section], given: dict, indent: str) -> None:
        for name, spec in schema_of(cls).items():
            if isinstance(spec, type):
                lines.append(f"{indent}{name}:")
                walk(spec, given.get(name, {}), indent + "  ")
                continue
            assert isinstance(spec, Key)
            value = given.get(name, spec.default)
            lines.append(f"{indent}# {spec.doc}")
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines.append(f"{indent}{name}:")
                for entry in value:
                    body = yaml.safe_dump(entry, sort_keys=False, width=1000).splitlines()
                    lines.append(f"{indent}  - {body[0]}")
                    lines.extend(f"{indent}    {line}" for line in body[1:])
            else:
                lines.append(f"{indent}{name}: {_flow(value, width=1000)}")

    for name, spec in schema_of(Config).items():
        assert isinstance(spec, type)
        lines.append(f"{name}:")
        walk(spec, (overrides or {}).get(name, {}), "  ")
        lines.append("")
    return "\n".join(lines)

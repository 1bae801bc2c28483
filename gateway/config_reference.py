"""The settings reference the README embeds: every field, its default and its docstring.

Regenerate the README section with ``python -m gateway.config_reference`` after changing a setting.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel

from gateway.config import ServerConfig
from gateway.model_config import ModelConfig

# Settings that map names to sections: shown once with a placeholder key.
_MAPPINGS = {"pools": "<pool>", "policies": "<pool>", "kubernetes": "<pool>"}


def _section(annotation: object) -> type[BaseModel] | None:
    """The settings class inside ``X``, ``X | None`` or ``dict[str, X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, dict):
        for arg in typing.get_args(annotation):
            found = _section(arg)
            if found is not None:
                return found
    return None


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        nested = _section(field.annotation)
        if nested is not None and name in _MAPPINGS:
            shown_default = "{default: {}}" if name == "pools" else "{}"
            rows.append(f"| `{prefix}{name}` | `{shown_default}` | {field.description} |")
            rows.extend(_rows(nested, f"{prefix}{name}.{_MAPPINGS[name]}."))
            continue
        if nested is not None:
            rows.extend(_rows(nested, f"{prefix}{name}."))
            continue
        default = "" if field.is_required() else field.get_default(call_default_factory=True)
        shown = list(default) if isinstance(default, tuple) else default
        rows.append(f"| `{prefix}{name}` | `{shown}` | {field.description} |")
    return rows


def reference() -> str:
    """Markdown tables of every setting with its default and meaning (the README embeds this)."""
    header = ["| setting | default | meaning |", "|---|---|---|"]
    server = "\n".join(["#### `batchgate.yaml`", "", *header, *_rows(ServerConfig, "")])
    model = "\n".join(["#### `models/<name>/config.yaml`", "", *header, *_rows(ModelConfig, "")])
    return f"{server}\n\n{model}\n"


if __name__ == "__main__":
    print(reference(), end="")

"""A form built from a JSON schema (a task's pydantic `Params`): one input per property.

Strings, numbers, integers, booleans and enums get their natural input (a string whose possible
values the page knows, such as a dataset's targets, a choice among them); lists are typed comma
separated; anything else as JSON. Required properties are marked with `*` and checked before
sending; optional ones left empty are not sent, so the task's own defaults apply. The trainer
validates again and its error detail is shown if it disagrees.
"""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local `$ref` and unwrap `Optional[X]` (`anyOf: [X, null]`) to X."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        schema = {**_resolve(options[0], root), **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


class Field:
    """One property: its input element and how to read it back."""

    def __init__(self, name: str, schema: dict, required: bool, root: dict, choices: list[str] | None = None) -> None:
        self.name, self.required = name, required
        self.kind = "enum" if "enum" in schema else schema.get("type", "json")
        if self.kind not in ("enum", "boolean", "number", "integer", "string", "array"):
            self.kind = "json"  # objects, unions: typed as JSON
        if choices is not None and self.kind == "string":
            self.kind = "choice"  # a string the page knows the possible values of (a dataset's targets)
        label = schema.get("title", name) + (" *" if required else "")
        default = schema.get("default")
        if self.kind == "enum":
            self.input = ui.select(schema["enum"], label=label, value=default)
        elif self.kind == "choice":
            self.input = ui.select([], label=label)
            self.default = default
            self.set_choices(choices or [])
        elif self.kind == "boolean":
            self.input = ui.checkbox(label, value=bool(default))
        elif self.kind in ("number", "integer"):
            self.input = ui.number(label, value=default, min=schema.get("minimum"), max=schema.get("maximum"),
                                   step=1 if self.kind == "integer" else None)
        else:
            self.input = ui.input(label, value=self._as_text(default))
        self.input.props(f'data-field="{name}"').classes("full-width").mark(f"param:{name}")
        if schema.get("description"):
            self.input.tooltip(schema["description"])
        self.items = _resolve(schema.get("items", {}), root) if self.kind == "array" else {}

    def set_choices(self, choices: list[str]) -> None:
        """The values a "choice" field offers; the chosen one stays if it still can be, else the
        default, else the first."""
        value = next((v for v in (self.input.value, self.default) if v in choices), next(iter(choices), None))
        self.input.set_options(list(choices), value=value)

    def _as_text(self, value: Any) -> str:
        if value is None:
            return ""
        if self.kind == "array":
            return ", ".join(map(str, value))
        return value if self.kind == "string" else json.dumps(value)

    def read(self) -> Any:
        """The value to send, or None to leave it out. Raises ValueError on unreadable input."""
        value = self.input.value
        if self.kind == "boolean":
            return bool(value)
        if value is None or value == "":
            if self.required:
                raise ValueError("required")
            return None
        if self.kind == "integer":
            return int(value)
        if self.kind == "array":
            parts = [p.strip() for p in str(value).split(",") if p.strip()]
            convert = {"integer": int, "number": float}.get(self.items.get("type"), str)
            return [convert(p) for p in parts]
        if self.kind == "json":
            return json.loads(value)  # a JSONDecodeError is a ValueError
        return value


class SchemaForm:
    """Inputs for every property of `schema`, created in the current container. `choices` turns
    string properties into a choice among the given values (see `Field.set_choices`)."""

    def __init__(self, schema: dict, choices: dict[str, list[str]] | None = None) -> None:
        required = set(schema.get("required", []))
        choices = choices or {}
        self.fields = [Field(name, _resolve(prop, schema), name in required, schema, choices.get(name))
                       for name, prop in schema.get("properties", {}).items()]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def values(self) -> dict[str, Any]:
        """The parameters to send; raises ValueError naming the first bad or missing field."""
        out = {}
        for field in self.fields:
            try:
                value = field.read()
            except ValueError as e:
                raise ValueError(f"{field.name}: {e}") from None
            if value is not None:
                out[field.name] = value
        return out

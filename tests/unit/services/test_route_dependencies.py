"""Every per-service dependency names a component the composition root really builds, of its type."""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from typing import Annotated, Any

from fastapi.params import Depends

from cnop.container import Container
from cnop.services import dependencies


def _component_aliases() -> dict[str, tuple[str, Any]]:
    """alias name -> (component name, annotated type), for each alias built with `provide(name)`."""
    found: dict[str, tuple[str, Any]] = {}
    for alias_name, value in vars(dependencies).items():
        if typing.get_origin(value) is not Annotated:
            continue
        annotated, *extras = typing.get_args(value)
        for extra in extras:
            if isinstance(extra, Depends) and extra.dependency is not None:
                function_name = extra.dependency.__name__
                if function_name.startswith("get_"):
                    found[alias_name] = (function_name.removeprefix("get_"), annotated)
    return found


def test_each_alias_reads_a_container_field_of_the_same_type() -> None:
    aliases = _component_aliases()
    fields = {field.name for field in dataclasses.fields(Container)}
    hints = typing.get_type_hints(Container)
    assert len(aliases) >= 25  # the whole list, not an empty scan
    for alias_name, (component, annotated) in aliases.items():
        assert component in fields, f"{alias_name} reads {component!r}, which the container does not build"
        assert hints[component] == annotated, (
            f"{alias_name} is {annotated}, the container's {component} is {hints[component]}"
        )


def test_the_lookup_is_by_name_on_the_apps_components() -> None:
    class App:
        class state:
            container = type("Components", (), {"accounts": "the accounts service"})()

    class Request:
        app = App

    provided = dependencies.provide("accounts")
    assert provided.__name__ == "get_accounts"
    assert asyncio.run(provided(Request())) == "the accounts service"  # type: ignore[arg-type]

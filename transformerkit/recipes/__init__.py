"""Recipes: TOML files that say what to train and how; shipped here, named by their file's stem."""

from __future__ import annotations

import copy
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def available() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | os.PathLike, overrides: list[str] = ()) -> dict[str, Any]:
    """A shipped recipe by name, or any TOML file, with `key.sub=value` overrides applied."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe file")
        text, source = path.read_text(), str(path)
    else:
        shipped = resources.files(__name__) / f"{name_or_path}.toml"
        if not shipped.is_file():
            raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(available())}")
        text, source = shipped.read_text(), str(name_or_path)
    try:
        recipe = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: {error}") from None
    recipe = apply_overrides(recipe, overrides)
    recipe.setdefault("name", path.stem if path.suffix == ".toml" else str(name_or_path))
    return recipe


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`training.lr=3e-4` sets recipe['training']['lr'] = 3e-4; values are read as TOML, else as strings."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, for example training.lr=3e-4")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, leaf = key.strip().split(".")
        table = recipe
        for parent in parents:
            table = table.setdefault(parent, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {item!r}: {parent!r} is not a table in this recipe")
        table[leaf] = value
    return recipe

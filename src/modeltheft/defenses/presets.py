"""Build a defense pipeline from a preset name or a TOML file.

A TOML file holds ``[[stages]]`` tables, each with a ``type`` (a registered stage name) and
that stage's parameters. Unknown types and unknown parameters are errors, never ignored; each
stage's parameters are checked against its declared ``_parameter_constraints``
(:mod:`modeltheft.registry`), so every message names the stage, the parameter and the value.
"""

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

# Importing the stage modules registers their stages in STAGES.
from modeltheft.defenses import (
    detection,
    misinformation,
    output,
    perturb,
    ratelimit,
    service_monitor,
    streams,
    watermark,
)
from modeltheft.defenses.base import STAGES, Pipeline, Stage
from modeltheft.errors import ConfigError
from modeltheft.tomlfile import read_toml

STAGE_MODULES = (ratelimit, output, detection, misinformation, watermark, perturb)
"""The modules whose stages are registered (imported for that effect)."""
STAGE_MODULES += (streams,)
STAGE_MODULES += (service_monitor,)


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("modeltheft.defenses") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def build_stage(spec: dict[str, Any]) -> Stage:
    """One stage from its TOML table."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"each stage needs a 'type'; got {spec!r}")
    params = dict(spec)
    kind = params.pop("type")
    if not isinstance(kind, str):
        raise ConfigError(f"a stage 'type' must be a string; got {kind!r}")
    return STAGES.build(kind, params)


def pipeline_from_dict(config: dict[str, Any], name: str = "custom") -> Pipeline:
    """A pipeline from parsed TOML."""
    unknown = sorted(set(config) - {"stages"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) in defense config: {', '.join(unknown)}")
    stages = config.get("stages", [])
    if not isinstance(stages, list):
        raise ConfigError("'stages' must be an array of tables ([[stages]])")
    return Pipeline([build_stage(spec) for spec in stages], name=name)


def load_pipeline(preset_or_path: str | Path) -> Pipeline:
    """A pipeline from a preset name (``none``, ``lab``, …) or the path of a TOML file."""
    text = str(preset_or_path)
    if text in preset_names():
        source = resources.files("modeltheft.defenses") / "presets" / f"{text}.toml"
        return pipeline_from_dict(tomllib.loads(source.read_text()), name=text)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"defense {text!r} is neither a preset ({', '.join(preset_names())}) nor a TOML file"
        )
    return pipeline_from_dict(read_toml(path), name=path.stem)

"""Wheel build hook: GraphiQL's assets, built from web/package-lock.json, go into the wheel as
wallet/static/graphiql/* (a checkout keeps them untracked; see scripts/graphiql_assets.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class GraphiQLAssetsHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return  # an editable install serves the checkout's copy (`make install` makes it)
        script = Path(self.root) / "scripts" / "graphiql_assets.py"
        spec = importlib.util.spec_from_file_location("graphiql_assets", script)
        assert spec is not None
        assert spec.loader is not None
        assets = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(assets)
        for path in assets.build():  # raises when the assets cannot be built: no wheel without
            build_data["force_include"][str(path)] = f"wallet/static/graphiql/{path.name}"

"""GraphiQL's browser assets: `npm ci` in web/ (pinned by web/package-lock.json), then the four
files the page asks for copied into wallet/static/graphiql/, where the service serves them from.

The wheel's build hook (scripts/hatch_build.py) runs this, so a wheel carries its assets; `make
install` runs it for a checkout. node_modules already installed at the locked versions (say, by
the Dockerfile's Node stage) is used as it is, without npm.

Usage: python scripts/graphiql_assets.py [--optional]   (--optional: no npm is a warning)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
TARGET = ROOT / "wallet" / "static" / "graphiql"
# The name the page asks for (/graphql/assets/<name>) -> the file in node_modules.
ASSETS = {
    "react.js": "react/umd/react.production.min.js",
    "react-dom.js": "react-dom/umd/react-dom.production.min.js",
    "graphiql.js": "graphiql/graphiql.min.js",
    "graphiql.css": "graphiql/graphiql.min.css",
}


class AssetsError(RuntimeError):
    """The assets cannot be built here; the message says why."""


def installed_as_locked(web: Path = WEB) -> bool:
    """Does web/node_modules hold exactly the locked versions of the page's packages?"""
    locked = json.loads((web / "package-lock.json").read_text(encoding="utf-8"))["packages"]
    wanted = json.loads((web / "package.json").read_text(encoding="utf-8"))["dependencies"]
    for name in wanted:
        manifest = web / "node_modules" / name / "package.json"
        if not manifest.is_file():
            return False
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        if version != locked[f"node_modules/{name}"]["version"]:
            return False
    return all((web / "node_modules" / relative).is_file() for relative in ASSETS.values())


def build(*, web: Path = WEB, target: Path = TARGET) -> list[Path]:
    """Install the locked packages if needed, copy the assets into `target`; return the files."""
    if not installed_as_locked(web):
        npm = shutil.which("npm")
        if npm is None:
            raise AssetsError(
                "npm not found, and web/node_modules does not hold the locked GraphiQL assets"
            )
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=web, check=True
        )
        if not installed_as_locked(web):
            raise AssetsError("npm ci did not install the versions web/package-lock.json pins")
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, relative in ASSETS.items():
        destination = target / name
        shutil.copyfile(web / "node_modules" / relative, destination)
        copied.append(destination)
    return copied


def main(argv: list[str]) -> int:
    try:
        files = build()
    except (AssetsError, subprocess.CalledProcessError) as error:
        if "--optional" in argv:
            print(f"{error}: the API works, the GraphiQL page will lack its assets")
            return 0
        print(f"graphiql_assets: {error}", file=sys.stderr)
        return 1
    print(f"GraphiQL assets in {TARGET.relative_to(ROOT)}: {', '.join(f.name for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

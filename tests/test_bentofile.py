"""The Bento's package list covers what the scoring service imports (a Bento built without one fails at start)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement such as ``redis[hiredis]>=5``."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()  # type: ignore[union-attr]


def _closure(names: set[str]) -> set[str]:
    """The distributions and everything they require (installed metadata; extras named in the list included)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_the_bento_lists_every_package_the_scoring_service_imports() -> None:
    ours = ("import json, sys; import services.scorer; print(json.dumps([m.__file__ for m in list(sys.modules.values())"
            " if m.__name__.split('.')[0] in ('fraudops', 'services') and getattr(m, '__file__', None)]))")
    loaded = subprocess.run([sys.executable, "-c", ours], cwd=REPO, capture_output=True, text=True, check=True)
    imported: set[str] = set()
    for path in json.loads(loaded.stdout.splitlines()[-1]):
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    by_module = metadata.packages_distributions()
    needed = {_name(dist) for module in imported - {"fraudops", "services"} - set(sys.stdlib_module_names)
              for dist in by_module.get(module, [])}
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    listed = {_name(p) for p in bento["python"]["packages"]}
    extras = {_name(extra) for p in bento["python"]["packages"] for extra in re.findall(r"\[([^\]]+)\]", p)}
    missing = needed - _closure(listed | extras)
    assert not missing, f"bentofile.yaml lacks packages the scoring service imports: {sorted(missing)}"

"""The model registry: BentoML's model store plus a champion pointer with history, optionally mirrored to an
object store so that a pipeline pod can publish what a scorer pod loads.

Local mode keeps everything under ``BENTOML_HOME`` (``models/`` is BentoML's store, ``fraudops/champion.json``
the pointer). With a ``remote`` URL (``s3://bucket/prefix`` or a mounted path), every registered model is also
exported to ``<remote>/models/<name>/<version>.bentomodel`` and the pointer lives at ``<remote>/champion.json``;
a registry on another machine imports a model into its own store the first time it is asked for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.models import ModelStore
from bentoml.exceptions import NotFound

from fraudops import storage
from fraudops.bundle import ModelBundle
from fraudops.errors import RegistryError

log = logging.getLogger(__name__)

MODEL_NAME = "fraud-detector"
POINTER_FILE = "champion.json"
REGISTRY_URL_ENV = "FRAUDOPS_REGISTRY_URL"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_home() -> Path:
    """BentoML's home: ``$BENTOML_HOME`` or ``~/bentoml``."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


@dataclass
class ModelInfo:
    """One registered model as listed by the registry."""

    tag: str
    created_at: str
    labels: dict[str, str]
    metadata: dict[str, Any]
    champion: bool = False
    local: bool = True


class Registry:
    """Register models, move the champion pointer, and hand out model bundles."""

    def __init__(self, home: str | Path | None = None, remote: str | None = None) -> None:
        self.home = Path(home) if home else default_home()
        self.remote = (remote if remote is not None else os.environ.get(REGISTRY_URL_ENV, "")).rstrip("/") or None
        self.store = ModelStore(self.home / "models")
        self.pointer_url = (storage.join(self.remote, POINTER_FILE) if self.remote
                            else str(self.home / "fraudops" / POINTER_FILE))

    def __repr__(self) -> str:
        return f"Registry(home={str(self.home)!r}, remote={self.remote!r})"

    # -- models -------------------------------------------------------------------------------------------
    def register(self, bundle_dir: str | Path, *, extra_files: dict[str, str | Path] | None = None,
                 labels: dict[str, str] | None = None, metadata: dict[str, Any] | None = None,
                 name: str = MODEL_NAME) -> str:
        """Store a model bundle (plus evaluation files) as a new BentoML model; returns its tag."""
        bundle = ModelBundle.load(bundle_dir)  # refuse to register something that cannot be served
        meta = {**bundle.meta, **(metadata or {})}
        with bentoml.models.create(name, labels=labels or {}, metadata=_jsonable(meta), module="fraudops",
                                   _model_store=self.store) as model:
            shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
            for target, source in (extra_files or {}).items():
                shutil.copy2(source, Path(model.path) / target)
        tag = str(model.tag)
        if self.remote:
            self._upload(tag)
        log.info("registered %s in %s", tag, self)
        return tag

    def _remote_file(self, tag: str) -> str:
        name, version = tag.split(":", 1)
        return storage.join(self.remote or "", "models", name, f"{version}.bentomodel")

    def _upload(self, tag: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = bentoml.models.export_model(tag, str(Path(tmp) / "model.bentomodel"), _model_store=self.store)
            fs, path = storage.filesystem(self._remote_file(tag))
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(local, path)

    def _model(self, tag: str) -> bentoml.Model:
        try:
            return self.store.get(tag)
        except NotFound:
            pass
        if not self.remote:
            raise RegistryError(f"model {tag!r} is not in the model store at {self.home / 'models'}")
        fs, path = storage.filesystem(self._remote_file(tag))
        if not fs.exists(path):
            raise RegistryError(f"model {tag!r} is neither in {self.home / 'models'} nor at {self._remote_file(tag)}")
        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp) / "model.bentomodel")
            fs.get_file(path, local)
            bentoml.models.import_model(local, _model_store=self.store)
        log.info("imported %s from %s", tag, self.remote)
        return self.store.get(tag)

    def resolve(self, tag: str) -> str:
        """Full tag for ``tag``: ``champion``, ``name:version``, or ``name`` (latest)."""
        if tag == "champion":
            champion = self.champion()
            if champion is None:
                raise RegistryError("there is no champion yet; train and promote a model first")
            return champion
        if ":" not in tag or tag.endswith(":latest"):
            return str(self._model(tag).tag)
        return tag

    def path(self, tag: str) -> Path:
        """Directory of a registered model (imported from the remote store if needed)."""
        return Path(self._model(self.resolve(tag)).path)

    def load(self, tag: str = "champion") -> ModelBundle:
        """The model bundle for ``tag`` (default: the champion)."""
        return ModelBundle.load(self.path(tag))

    def info(self, tag: str) -> ModelInfo:
        """Labels and metadata of one model."""
        model = self._model(self.resolve(tag))
        return ModelInfo(tag=str(model.tag), created_at=model.creation_time.isoformat(timespec="seconds"),
                         labels=dict(model.info.labels), metadata=dict(model.info.metadata),
                         champion=str(model.tag) == self.champion())

    def list(self, name: str = MODEL_NAME) -> list[ModelInfo]:
        """All models of ``name``, newest first, including remote ones not imported here."""
        champion = self.champion()
        local = {str(m.tag): m for m in bentoml.models.list(name, _model_store=self.store)} if self._has(name) else {}
        infos = [ModelInfo(tag=t, created_at=m.creation_time.isoformat(timespec="seconds"),
                           labels=dict(m.info.labels), metadata=dict(m.info.metadata), champion=t == champion)
                 for t, m in local.items()]
        if self.remote:
            fs, base = storage.filesystem(storage.join(self.remote, "models", name))
            remote_files = fs.glob(f"{base}/*.bentomodel") if fs.exists(base) else []
            for path in remote_files:
                tag = f"{name}:{Path(path).name.removesuffix('.bentomodel')}"
                if tag not in local:
                    infos.append(ModelInfo(tag=tag, created_at="", labels={}, metadata={},
                                           champion=tag == champion, local=False))
        return sorted(infos, key=lambda i: i.created_at, reverse=True)

    def _has(self, name: str) -> bool:
        return (self.home / "models" / name).is_dir()

    # -- champion pointer ---------------------------------------------------------------------------------
    def _pointer(self) -> dict[str, Any]:
        doc = storage.read_json(self.pointer_url)
        return doc or {"champion": None, "lineage": [], "history": []}

    def champion(self) -> str | None:
        """Tag of the serving model, or None before the first promotion."""
        return self._pointer()["champion"]

    def history(self) -> list[dict[str, Any]]:
        """Every promote and rollback, oldest first."""
        return self._pointer()["history"]

    def promote(self, tag: str, reason: str, actor: str = "cli") -> dict[str, Any]:
        """Make ``tag`` the champion and log why."""
        tag = str(self._model(self.resolve(tag)).tag)  # must exist
        doc = self._pointer()
        previous = doc["champion"]
        if previous == tag:
            raise RegistryError(f"{tag} is already the champion")
        doc["champion"] = tag
        doc["lineage"].append(tag)
        event = {"at": _now(), "action": "promote", "tag": tag, "previous": previous, "reason": reason,
                 "actor": actor}
        doc["history"].append(event)
        storage.write_json(self.pointer_url, doc)
        log.info("promoted %s (previous: %s): %s", tag, previous, reason)
        return event

    def rollback(self, reason: str, actor: str = "cli") -> dict[str, Any]:
        """Reinstate the champion that served before the current one."""
        doc = self._pointer()
        if len(doc["lineage"]) < 2:
            raise RegistryError("nothing to roll back to: fewer than two models have been champion")
        current = doc["lineage"].pop()
        doc["champion"] = doc["lineage"][-1]
        event = {"at": _now(), "action": "rollback", "tag": doc["champion"], "previous": current,
                 "reason": reason, "actor": actor}
        doc["history"].append(event)
        storage.write_json(self.pointer_url, doc)
        log.info("rolled back from %s to %s: %s", current, doc["champion"], reason)
        return event


def _jsonable(value: Any) -> Any:
    """Metadata as the plain types BentoML accepts (no None, no numpy scalars); None entries are dropped."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value if v is not None]
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)

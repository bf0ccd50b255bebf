"""The model registry: BentoML's model store plus a champion pointer with history, optionally mirrored to an
object store so that a pipeline pod can publish what a scorer pod loads.

Local mode keeps everything under ``BENTOML_HOME`` (``models/`` is BentoML's store, ``fraudops/champion.json``
the pointer). With a ``remote`` URL (``s3://bucket/prefix`` or a mounted path), every registered model is also
exported to ``<remote>/models/<name>/<version>.bentomodel`` and the pointer lives at ``<remote>/champion.json``;
a registry on another machine imports a model into its own store the first time it is asked for it.

A store that fails (down, hung, denied) fails the call with a `RegistryStoreError` naming the step and the store's
answer, in the bounded time `fraudops.storage` sets. The pointer document (champion, lineage, history) is written
in one request, so a failed promotion or rollback leaves the previous one in force, history included; a model is
uploaded before the pointer names it, and `register` keeps no model it could not upload.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.models import ModelStore
from bentoml.exceptions import NotFound

from fraudops import storage
from fraudops.bundle import ModelBundle
from fraudops.errors import FraudopsError, RegistryError
from fraudops.settings import StoreSettings, variable

log = logging.getLogger(__name__)

MODEL_NAME = "fraud-detector"
POINTER_FILE = "champion.json"
NO_CHAMPION = "there is no champion yet; train and promote a model first"
REGISTRY_URL_ENV = variable(StoreSettings, "registry_url")


CHAMPION, SHADOW, CANARY = "champion", "shadow", "canary"
"""Roles of a logged row: the champion's, the challenger's in shadow (not returned), the challenger's as a canary."""
ROLLOUT_MODES = (SHADOW, CANARY)


@dataclass(frozen=True)
class Rollout:
    """A challenger on its way to champion, kept in the pointer document so that every scorer replica agrees:
    ``shadow`` (scored beside the champion, never returned) or ``canary`` (deciding for ``percent`` of customers)."""

    id: str
    challenger: str
    champion: str | None
    mode: str
    percent: float
    started_at: str
    stage_started_at: str
    actor: str
    reason: str

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Rollout:
        return cls(**{name: doc[name] for name in cls.__dataclass_fields__})


class RegistryStoreError(FraudopsError):
    """The store failed a call (down, timed out, denied) or holds a file that cannot be read.

    Not a `RegistryError` ("no such model") on purpose: a scorer falls back to its packaged model on those, and
    must keep the model it serves while the store is down or the champion's file is corrupt."""


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
        self.remote = (remote if remote is not None else StoreSettings.from_env().registry_url).rstrip("/") or None
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
            try:
                self._upload(tag)
            except RegistryStoreError as exc:
                self.store.delete(tag)  # registered everywhere or nowhere
                raise RegistryStoreError(f"{exc}; {tag} was not registered") from exc.__cause__
        log.info("registered %s in %s", tag, self)
        return tag

    def _remote_file(self, tag: str) -> str:
        name, version = tag.split(":", 1)
        return storage.join(self.remote or "", "models", name, f"{version}.bentomodel")

    @contextmanager
    def _calling_store(self, what: str) -> Iterator[None]:
        """Turn a store's failure inside the block into a `RegistryStoreError`: ``cannot <what>: <why>``."""
        try:
            yield
        except storage.failures() as exc:
            raise RegistryStoreError(f"cannot {what}: {storage.describe(exc)}") from exc

    def _upload(self, tag: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = bentoml.models.export_model(tag, str(Path(tmp) / "model.bentomodel"), _model_store=self.store)
            with self._calling_store(f"upload model {tag} to {self._remote_file(tag)}"):
                storage.put_file(local, self._remote_file(tag))

    def _ensure_uploaded(self, tag: str) -> None:
        """Upload ``tag`` unless the remote store holds it (a model registered before the registry had a remote)."""
        fs, path = storage.filesystem(self._remote_file(tag))
        with self._calling_store(f"look for model {tag} at {self._remote_file(tag)}"):
            found = fs.exists(path)
        if not found:
            self._upload(tag)
            log.info("uploaded %s to %s", tag, self.remote)

    def _model(self, tag: str) -> bentoml.Model:
        try:
            return self.store.get(tag)
        except NotFound:
            pass
        if not self.remote:
            raise RegistryError(f"model {tag!r} is not in the model store at {self.home / 'models'}")
        if ":" not in tag or tag.endswith(":latest"):
            raise RegistryError(f"no model {tag!r} in {self.home / 'models'}; the remote store is searched by "
                                "version only (`fraudops models list` shows the versions)")
        url = self._remote_file(tag)
        fs, path = storage.filesystem(url)
        with self._calling_store(f"look for model {tag} at {url}"):
            found = fs.exists(path)
        if not found:
            raise RegistryError(f"model {tag!r} is neither in {self.home / 'models'} nor at {url}")
        with tempfile.TemporaryDirectory() as tmp:
            local = str(Path(tmp) / "model.bentomodel")
            with self._calling_store(f"download model {tag} from {url}"):
                fs.get_file(path, local)
            try:
                bentoml.models.import_model(local, _model_store=self.store)  # nothing is kept if it fails
            except Exception as exc:  # tarfile, lzma, yaml and BentoML each raise their own on a damaged file
                raise RegistryStoreError(f"cannot import model {tag} from {url} (is the file truncated or "
                                         f"corrupt?): {storage.describe(exc)}") from exc
        log.info("imported %s from %s", tag, self.remote)
        return self.store.get(tag)

    def resolve(self, tag: str) -> str:
        """Full tag for ``tag``: ``champion``, ``name:version``, or ``name`` (latest)."""
        if tag == "champion":
            champion = self.champion()
            if champion is None:
                raise RegistryError(NO_CHAMPION)
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
            with self._calling_store(f"list the models in {self.remote}"):
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
        with self._calling_store(f"read the champion pointer {self.pointer_url}"):
            try:
                doc = storage.read_json(self.pointer_url)
            except ValueError as exc:
                raise RegistryStoreError(f"the champion pointer {self.pointer_url} is not valid JSON "
                                         f"({storage.describe(exc)}): restore it from a backup") from exc
        return doc or {"champion": None, "lineage": [], "history": []}

    def _write_pointer(self, doc: dict[str, Any], action: str) -> None:
        """Write the pointer document ``doc``, which records ``action`` (its last history event)."""
        try:
            storage.write_json(self.pointer_url, doc)
        except storage.failures() as exc:
            raise RegistryStoreError(
                f"cannot {action}: writing the champion pointer {self.pointer_url} failed: {storage.describe(exc)}. "
                "The pointer is written whole or not at all, so nothing changed, unless the store saved the write "
                "without answering (then all of it did): `fraudops models history` tells which once the store "
                "answers") from exc

    def champion(self) -> str | None:
        """Tag of the serving model, or None before the first promotion."""
        return self._pointer()["champion"]

    def history(self) -> list[dict[str, Any]]:
        """Every promote, rollback and rollout step, oldest first."""
        return self._pointer()["history"]

    # -- rollouts -----------------------------------------------------------------------------------------
    def rollout(self) -> Rollout | None:
        """The active rollout, if any."""
        return self.serving()[1]

    def serving(self) -> tuple[str | None, Rollout | None]:
        """The champion and the active rollout, read together (one read of the pointer)."""
        doc = self._pointer()
        rollout = doc.get("rollout")
        return doc["champion"], Rollout.from_dict(rollout) if rollout else None

    def start_rollout(self, tag: str, mode: str = "shadow", percent: float = 0.0, *, reason: str,
                      actor: str = "cli") -> dict[str, Any]:
        """Put ``tag`` beside the champion in ``mode`` (``canary``: deciding for ``percent`` of customers)."""
        _check_stage(mode, percent)
        tag = str(self._model(self.resolve(tag)).tag)
        if self.remote:
            self._ensure_uploaded(tag)  # every scorer replica must be able to fetch it
        doc = self._pointer()
        if doc.get("rollout"):
            active = doc["rollout"]
            raise RegistryError(f"a rollout of {active['challenger']} is active ({active['mode']}): promote or abort "
                                "it first")
        if doc["champion"] is None:
            raise RegistryError(f"there is no champion to roll {tag} out beside: promote a first model")
        if tag == doc["champion"]:
            raise RegistryError(f"{tag} is the champion already")
        now = _now()
        doc["rollout"] = {"id": uuid.uuid4().hex[:12], "challenger": tag, "champion": doc["champion"], "mode": mode,
                          "percent": float(percent), "started_at": now, "stage_started_at": now, "actor": actor,
                          "reason": reason}
        return self._record(doc, {"at": now, "action": "rollout-start", "tag": tag, "previous": doc["champion"],
                                  "mode": mode, "percent": float(percent), "reason": reason, "actor": actor},
                            f"start the rollout of {tag}")

    def set_rollout_stage(self, mode: str, percent: float = 0.0, *, reason: str, actor: str = "cli",
                          rollout_id: str | None = None) -> dict[str, Any]:
        """Move the active rollout to another stage (shadow, or canary at ``percent``); with ``rollout_id``, only if
        that rollout is still the active one."""
        _check_stage(mode, percent)
        doc = self._pointer()
        rollout = _active(doc, rollout_id)
        now = _now()
        rollout.update(mode=mode, percent=float(percent), stage_started_at=now)
        return self._record(doc, {"at": now, "action": "rollout-stage", "tag": rollout["challenger"],
                                  "previous": doc["champion"], "mode": mode, "percent": float(percent),
                                  "reason": reason, "actor": actor},
                            f"move the rollout of {rollout['challenger']} to {mode} {percent:g}%")

    def abort_rollout(self, *, reason: str, actor: str = "cli", rollout_id: str | None = None) -> dict[str, Any]:
        """End the active rollout (with ``rollout_id``: only if it is that one); the champion stays."""
        doc = self._pointer()
        rollout = _active(doc, rollout_id)
        del doc["rollout"]
        return self._record(doc, {"at": _now(), "action": "rollout-abort", "tag": rollout["challenger"],
                                  "previous": doc["champion"], "reason": reason, "actor": actor},
                            f"abort the rollout of {rollout['challenger']}")

    def _record(self, doc: dict[str, Any], event: dict[str, Any], action: str) -> dict[str, Any]:
        doc["history"].append(event)
        self._write_pointer(doc, action)
        log.info("%s: %s", action, event["reason"])
        return event

    def promote(self, tag: str, reason: str, actor: str = "cli", rollout_id: str | None = None) -> dict[str, Any]:
        """Make ``tag`` the champion and log why (with ``rollout_id``: only while that rollout is active)."""
        tag = str(self._model(self.resolve(tag)).tag)  # must exist
        if self.remote:
            self._ensure_uploaded(tag)  # before the pointer names it: every reader must be able to fetch it
        doc = self._pointer()
        if rollout_id is not None:
            _active(doc, rollout_id)
        previous = doc["champion"]
        if previous == tag:
            raise RegistryError(f"{tag} is already the champion")
        doc["champion"] = tag
        doc["lineage"].append(tag)
        event = {"at": _now(), "action": "promote", "tag": tag, "previous": previous, "reason": reason,
                 "actor": actor}
        rollout = doc.get("rollout")
        if rollout:  # promoting the challenger completes its rollout; promoting another model ends it
            event["rollout"] = rollout["id"]
            del doc["rollout"]
        doc["history"].append(event)
        self._write_pointer(doc, f"promote {tag}")
        log.info("promoted %s (previous: %s): %s", tag, previous, reason)
        return event

    def rollback(self, reason: str, actor: str = "cli") -> dict[str, Any]:
        """Reinstate the champion that served before the current one."""
        doc = self._pointer()
        if len(doc["lineage"]) < 2:
            raise RegistryError("nothing to roll back to: fewer than two models have been champion")
        current = doc["lineage"].pop()
        doc["champion"] = doc["lineage"][-1]
        doc.pop("rollout", None)  # a rollout beside the model rolled back from makes no sense any more
        event = {"at": _now(), "action": "rollback", "tag": doc["champion"], "previous": current,
                 "reason": reason, "actor": actor}
        doc["history"].append(event)
        self._write_pointer(doc, f"roll back to {doc['champion']}")
        log.info("rolled back from %s to %s: %s", current, doc["champion"], reason)
        return event


def _active(doc: dict[str, Any], rollout_id: str | None) -> dict[str, Any]:
    """The pointer's active rollout; `RegistryError` if there is none, or (``rollout_id``) another one."""
    rollout = doc.get("rollout")
    if not rollout:
        raise RegistryError("no rollout is active" + (f" (rollout {rollout_id} has ended)" if rollout_id else ""))
    if rollout_id is not None and rollout["id"] != rollout_id:
        raise RegistryError(f"rollout {rollout_id} has ended; {rollout['id']} of {rollout['challenger']} is active")
    return rollout


def _check_stage(mode: str, percent: float) -> None:
    if mode not in ROLLOUT_MODES:
        raise RegistryError(f"rollout mode must be one of {', '.join(ROLLOUT_MODES)}, not {mode!r}")
    if mode == CANARY and not 0 < percent <= 100:
        raise RegistryError(f"a canary needs a percent in (0, 100], not {percent:g}")
    if mode == SHADOW and percent:
        raise RegistryError("a shadow decides for no customer: leave percent at 0")


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

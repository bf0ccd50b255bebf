"""Every setting fraudops reads from the environment, in one place.

Each process reads the settings class of its part (pydantic-settings, ``FRAUDOPS_`` prefix); the classes share
the storage settings by inheritance, so one variable means one thing everywhere. `table` renders all of them as the
README's settings table (a test keeps the two equal): ``python -m fraudops.settings``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fraudops.decisions import DECLINE_FACTOR, REVIEW_FACTOR
from fraudops.errors import ConfigError, problems
from fraudops.schema import PRESETS, DatasetSpec, load_dataset_config

PREFIX = "FRAUDOPS_"


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True, env_ignore_empty=True,
                                      str_strip_whitespace=True, populate_by_name=True, protected_namespaces=())
    what: ClassVar[str] = "settings"
    reader: ClassVar[str] = ""

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """The settings from the environment (unset variables keep their defaults; ``overrides`` win);
        `ConfigError` naming each bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            detail = problems(exc, "settings", name=lambda loc: variable(cls, str(loc[0])))
            raise ConfigError(f"invalid {cls.what}: {detail}") from None


def variable(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of a settings field (the first alias, or the prefix plus its upper-case name)."""
    info = cls.model_fields.get(field)
    if info is None:
        return field
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(alias) if alias else PREFIX + field.upper()


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, bounded by its cgroup's CPU limit (a container's)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cpus, math.ceil(limit))) if limit else cpus


def _cgroup_cpu_limit(proc: Path = Path("/proc/self/cgroup"), mountinfo: Path = Path("/proc/self/mountinfo")
                      ) -> float | None:
    """CPUs of the tightest CPU quota over this process's cgroup and its ancestors (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``) that its mounts show; None without one.

    A group's folder is its path in ``proc`` below the root of a mount of its hierarchy (``mountinfo``): in a
    container without a cgroup namespace the mount shows the container's own group, not the host's root."""
    try:
        groups = {controllers: path for _, controllers, path in
                  (line.split(":", 2) for line in proc.read_text().splitlines() if line.count(":") >= 2)}
    except OSError:
        return None
    v1 = next((path for controllers, path in groups.items() if "cpu" in controllers.split(",")), None)
    limits = []
    for point, root, hierarchy in _cpu_mounts(mountinfo):
        group = groups.get("") if hierarchy == "cgroup2" else v1
        if group is None or ".." in group.split("/") or (
                root != "/" and group != root and not group.startswith(root.rstrip("/") + "/")):
            continue  # not in this hierarchy, outside the cgroup namespace's root, or not below what the mount shows
        folder = point / group[len(root.rstrip("/")):].strip("/")  # then each ancestor up to the mount point
        limits += [_quota(f) for f in (folder, *folder.parents) if f == point or point in f.parents]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _cpu_mounts(mountinfo: Path) -> list[tuple[Path, str, str]]:
    """The mount point, mount root and type of each cgroup mount that can hold a CPU quota: the v2 hierarchy, and
    a v1 hierarchy with the ``cpu`` controller (``mountinfo``: proc(5)'s format)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields, _, rest = line.partition(" - ")
        own, other = fields.split(), rest.split()
        if len(own) >= 5 and len(other) >= 3:
            mounts.append((own[0], own[1], Path(_unescape(own[4])), _unescape(own[3]), other[0], other[2]))
    covered = {(parent, point) for _, parent, point, *_ in mounts}  # a mount on a point hides its parent there
    return [(point, root, kind) for mount, _, point, root, kind, options in mounts
            if (mount, point) not in covered and (kind == "cgroup2" or (kind == "cgroup" and "cpu" in
                                                                        options.split(",")))]


def _unescape(field: str) -> str:
    """A mountinfo path field: space, tab, newline and backslash come as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _quota(folder: Path) -> float | None:
    """The CPU quota a cgroup folder sets, in CPUs (None: no quota, or not a cgroup folder)."""
    try:
        if (folder / "cpu.max").exists():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class StoreSettings(_Settings):
    """Where models, pointers and logs live (every process)."""

    what = "storage settings"
    reader = "all"

    registry_url: str = Field("", description="object-store URL of the model registry (s3://bucket/prefix); empty: "
                              "the local BentoML home only")
    s3_endpoint: str = Field("", validation_alias=AliasChoices("FRAUDOPS_S3_ENDPOINT", "AWS_ENDPOINT_URL"),
                             description="S3 endpoint URL for a non-AWS store (falls back to AWS_ENDPOINT_URL)")
    prediction_log: str = Field("", description="prediction-log root, local or URL; empty: "
                                "$BENTOML_HOME/fraudops/prediction-log")
    prediction_spill: str = Field("", description="local directory for log rows the store refused at shutdown; "
                                  "empty: $TMPDIR/fraudops-predlog-spill")
    monitor_dir: str = Field("", description="drift job output root (reports, summaries), local or URL; empty: "
                             "$BENTOML_HOME/fraudops/monitor")


class ServingConfig(StoreSettings):
    """Settings of the scoring service, read by each worker at start."""

    what = "scoring service settings"
    reader = "scorer"

    model_tag: str = Field("champion", min_length=1, description="champion (follows the pointer), name[:version]")
    dataset: str = Field("synthetic", min_length=1, validation_alias="FRAUDOPS_SCHEMA",
                         description="preset or dataset config file the clients' rows follow")
    max_batch: int = Field(1000, ge=1, le=100_000, description="most transactions (or labels) in one request")
    review_factor: float = Field(REVIEW_FACTOR, gt=0, le=1, description="review from threshold * review_factor")
    decline_factor: float = Field(DECLINE_FACTOR, gt=0, description="decline from threshold * decline_factor")
    reasons: int = Field(3, ge=1, le=50, description="reason codes per transaction when explain is true")
    poll_seconds: float = Field(30.0, ge=0, description="champion pointer poll interval; 0 turns polling off")
    log_flush_rows: int = Field(10_000, ge=1, description="write the log when this many rows wait")
    log_flush_seconds: float = Field(10.0, gt=0, description="... or this often")
    prediction_wal: str = Field("", description="local directory where each prediction is written ahead before its "
                                "200, so a killed scorer loses none (its next start, or `fraudops features rebuild`, "
                                "writes them to the log); empty: $BENTOML_HOME/fraudops/prediction-wal; `off`: no "
                                "write-ahead")
    wal_fsync_seconds: float = Field(1.0, ge=0, description="most seconds between fsyncs of the write-ahead log "
                                     "(what a node crash can lose); 0: fsync before every answer")
    workers: int = Field("auto", ge=1, le=64, validate_default=True, description="BentoML worker processes, each "
                         "with its own model and store connection; `auto`: one per CPU the scorer may use (its CPU "
                         "affinity, bounded by a cgroup CPU limit). `/reload` reaches them all. They share "
                         "connections, not requests: a client with a few keep-alive connections opened at once may "
                         "load only one of them (the first to wake accepts them all)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body (413 above, unread)")
    body_timeout_seconds: float = Field(30.0, gt=0, description="time a client has to send its body (408 after)")
    feature_store_url: SecretStr = Field(SecretStr(""), description="redis:// URL of the online feature store every "
                                         "replica shares (live entity features); empty: the model's frozen snapshot "
                                         "of the training window only")
    feature_store_timeout_seconds: float = Field(0.05, gt=0, le=10, description="wait for the feature store per "
                                                 "call (each connect, send and reply; a request's replies, its read "
                                                 "then its write, also get the allowance below); then the frozen "
                                                 "snapshot answers, flagged")
    feature_store_key_timeout_seconds: float = Field(0.0002, ge=0, le=0.1, description="added to that wait for a "
                                                     "request's store call per entity value it reads or records "
                                                     "(a batch of 1,000 transactions with 3 entity columns has up "
                                                     "to 3,000), so that a large batch is not taken for a slow "
                                                     "store; a call queued behind the worker's other calls (they "
                                                     "take turns) also waits this long per entity value of theirs")
    feature_store_retry_seconds: float = Field(1.0, ge=0, le=600, description="after the feature store was slow or "
                                               "unreachable, how long requests skip it (frozen snapshot at once, "
                                               "flagged) before one tries it again")
    feature_store_max_pending: int = Field(50_000, ge=0, description="most transactions a worker holds to record "
                                           "once the feature store is back (beyond, the oldest are dropped and "
                                           "counted; `fraudops features rebuild --from-log` restores them)")
    internal_token: SecretStr = Field(SecretStr(""), description="bearer token of /feedback and /reload; empty: "
                                      "read FRAUDOPS_INTERNAL_TOKEN_FILE, else generated at start (see the log)")
    internal_token_file: str = Field("", description="file holding the bearer token (a mounted Secret); empty: "
                                     "$BENTOML_HOME/fraudops/internal-token, created 0600 if missing")

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return min(usable_cpus(), 64)
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("should be a whole number of workers or auto")
        return value

    @model_validator(mode="after")
    def _store_url_is_redis(self) -> ServingConfig:
        url = self.feature_store_url.get_secret_value()
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"FRAUDOPS_FEATURE_STORE_URL must start with redis://, rediss:// or unix://, got "
                             f"{url.split('://')[0]!r}://...")
        return self

    @model_validator(mode="after")
    def _bands_are_ordered(self) -> ServingConfig:
        if self.review_factor > self.decline_factor:
            raise ValueError(f"review_factor ({self.review_factor}) must not exceed decline_factor "
                             f"({self.decline_factor})")
        return self

    def service_spec(self) -> DatasetSpec:
        """The transaction schema the service accepts (a preset name or a dataset config file)."""
        return PRESETS[self.dataset] if self.dataset in PRESETS else load_dataset_config(self.dataset)


class TriggerSettings(StoreSettings):
    """Settings of the retrain trigger (`fraudops trigger serve`) and its backends."""

    what = "retrain trigger settings"
    reader = "trigger"

    trigger_token: SecretStr = Field(SecretStr(""), description="bearer token Alertmanager sends to POST /alerts "
                                     "(or --token-file)")
    kfp_token: SecretStr = Field(SecretStr(""), validation_alias="KFP_TOKEN",
                                 description="bearer token for the Kubeflow Pipelines API (kfp backend)")


SETTINGS: tuple[type[_Settings], ...] = (StoreSettings, ServingConfig, TriggerSettings)


def table() -> str:
    """A Markdown table of every variable: name, default, which process reads it, meaning."""
    rows = ["| Variable | Default | Read by | Meaning |", "| --- | --- | --- | --- |"]
    seen: set[str] = set()
    for cls in SETTINGS:
        for name, info in cls.model_fields.items():
            var = variable(cls, name)
            if var in seen:
                continue
            seen.add(var)
            default = info.default.get_secret_value() if isinstance(info.default, SecretStr) else info.default
            shown = f"`{default}`" if default not in ("", None) else ""
            rows.append(f"| `{var}` | {shown} | {cls.reader} | {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())

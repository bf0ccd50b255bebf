"""Column roles of a fraud table (`DatasetSpec`), the built-in presets and dataset config files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fraudops.errors import ConfigError, problems


class DatasetSpec(BaseModel):
    """What each column of a fraud table means to fraudops.

    Only ``target`` is required. ``timestamp`` orders the rows in time (datetime strings, or numbers read as
    seconds from an undisclosed origin, as in IEEE-CIS). ``account`` and ``entities`` drive the entity
    features (transactions and accounts per device, per IP, ...); they are not model inputs themselves.
    ``categorical`` columns go to CatBoost as native categories; every other remaining column is numeric
    unless listed in ``drop``. ``windows`` are the sliding windows of the entity features (besides all history).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    target: str
    timestamp: str | None = None
    time_format: str | None = Field(default=None, description="strftime format of timestamp columns")
    signup_time: str | None = None
    account: str | None = None
    entities: tuple[str, ...] = ()
    amount: str | None = None
    categorical: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    id_column: str | None = None
    windows: tuple[str, ...] = Field(default=("1h", "24h", "7d"), description="sliding windows of the entity "
                                     "features (a whole number and a unit s, m, h, d or w), besides all history")

    @model_validator(mode="after")
    def _roles_are_consistent(self) -> DatasetSpec:
        special = {self.target, self.timestamp, self.signup_time, self.id_column} - {None}
        for role, cols in (("categorical", self.categorical), ("entities", self.entities)):
            clash = special.intersection(cols)
            if clash:
                raise ValueError(f"{role} must not contain target/timestamp/id columns: {sorted(clash)}")
        bad = [w for w in self.windows if not re.fullmatch(r"[1-9]\d*[smhdw]", w)]
        if bad:
            raise ValueError(f"windows must be a whole number and a unit (s, m, h, d or w) such as 1h or 7d, got {bad}")
        if self.target in self.drop:
            raise ValueError(f"target column {self.target!r} cannot be dropped")
        return self

    @property
    def time_columns(self) -> tuple[str, ...]:
        """Columns holding points in time."""
        return tuple(c for c in (self.timestamp, self.signup_time) if c)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns a training table must have."""
        cols = [self.target, *self.time_columns, *self.entities, *self.categorical]
        cols += [c for c in (self.account, self.amount) if c]
        return tuple(dict.fromkeys(cols))

    def non_feature_columns(self) -> set[str]:
        """Columns never given to the model as raw inputs."""
        cols = {self.target, self.id_column, self.account, *self.entities, *self.drop, *self.time_columns}
        return {c for c in cols if c}

    def with_overrides(self, **overrides: Any) -> DatasetSpec:
        """A copy with the given roles replaced (``None`` values are ignored)."""
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return _build(data, source="command-line flags")


# The project's own synthetic transaction schema (see fraudops.data.synthetic).
SYNTHETIC = DatasetSpec(
    name="synthetic",
    target="is_fraud",
    timestamp="purchase_time",
    signup_time="signup_time",
    account="user_id",
    entities=("device_id", "ip_address"),
    amount="amount",
    categorical=("country", "source", "browser", "category", "payment_method"),
    id_column="transaction_id",
)

# The public e-commerce fraud table (../shared/data/ecommerce_fraud/Fraud_Data.csv.gz). `country` is added by
# joining the IP ranges table when it is given.
ECOMMERCE = DatasetSpec(
    name="ecommerce",
    target="class",
    timestamp="purchase_time",
    time_format="%m/%d/%Y %H:%M",
    signup_time="signup_time",
    account="user_id",
    entities=("device_id", "ip_address"),
    amount="purchase_value",
    categorical=("source", "browser", "sex"),
)

# IEEE-CIS (../shared/data/ieee_cis/ieee_cis_train.csv.gz): TransactionDT is seconds from an unknown origin.
IEEE_CIS = DatasetSpec(
    name="ieee-cis",
    target="isFraud",
    timestamp="TransactionDT",
    account="card1",
    entities=("card1", "addr1", "DeviceInfo"),
    amount="TransactionAmt",
    categorical=(
        "ProductCD", "card1", "card2", "card3", "card5", "addr1", "addr2",
        "R_emaildomain", "id_16", "id_27", "DeviceInfo",
    ),
    id_column="TransactionID",
)

PRESETS: dict[str, DatasetSpec] = {s.name: s for s in (SYNTHETIC, ECOMMERCE, IEEE_CIS)}


def _build(data: dict[str, Any], source: str) -> DatasetSpec:
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid dataset config in {source}: {problems(exc, 'spec')}") from None


def load_dataset_config(path: str | Path) -> DatasetSpec:
    """Read a dataset config file (YAML or JSON) holding the fields of `DatasetSpec`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read dataset config {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"dataset config {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"dataset config {path} must hold a mapping of column roles, got {type(data).__name__}")
    return _build(data, source=str(path))


def resolve_spec(
    preset: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> DatasetSpec:
    """The spec for a run: a preset or a config file (default: the synthetic schema), then flag overrides."""
    if preset and config_file:
        raise ConfigError("give either a preset or a dataset config file, not both")
    if config_file:
        base = load_dataset_config(config_file)
    elif preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        base = PRESETS[preset]
    elif overrides.get("target"):
        base = DatasetSpec(target=overrides["target"])
    else:
        base = SYNTHETIC
    return base.with_overrides(**overrides) if any(v is not None for v in overrides.values()) else base

"""Column roles: presets, dataset config files, flag overrides and their validation."""

from __future__ import annotations

import json

import pytest

from fraudops.errors import ConfigError
from fraudops.schema import ECOMMERCE, IEEE_CIS, PRESETS, SYNTHETIC, DatasetSpec, load_dataset_config, resolve_spec


def test_presets_are_registered_by_name():
    assert set(PRESETS) == {"synthetic", "ecommerce", "ieee-cis"}
    assert PRESETS["synthetic"] is SYNTHETIC
    assert PRESETS["ecommerce"] is ECOMMERCE
    assert PRESETS["ieee-cis"] is IEEE_CIS


def test_synthetic_preset_roles():
    assert SYNTHETIC.target == "is_fraud"
    assert SYNTHETIC.time_columns == ("purchase_time", "signup_time")
    assert SYNTHETIC.required_columns == (
        "is_fraud", "purchase_time", "signup_time", "device_id", "ip_address",
        "country", "source", "browser", "category", "payment_method", "user_id", "amount",
    )
    # entity, account, id and time columns are never raw model inputs; categorical and amount are
    assert SYNTHETIC.non_feature_columns() == {
        "is_fraud", "transaction_id", "user_id", "device_id", "ip_address", "purchase_time", "signup_time",
    }


def test_ecommerce_and_ieee_presets():
    assert ECOMMERCE.time_format == "%m/%d/%Y %H:%M"
    assert ECOMMERCE.target == "class"
    assert IEEE_CIS.signup_time is None
    assert IEEE_CIS.time_columns == ("TransactionDT",)
    # card1 is both an entity and a categorical input; the required columns list it once
    assert IEEE_CIS.required_columns.count("card1") == 1


def test_spec_is_frozen():
    with pytest.raises(ValueError):
        SYNTHETIC.target = "other"  # type: ignore[misc]


def test_resolve_default_is_synthetic():
    assert resolve_spec() is SYNTHETIC


def test_resolve_preset():
    assert resolve_spec("ecommerce") is ECOMMERCE


def test_resolve_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'.*ecommerce, ieee-cis, synthetic"):
        resolve_spec("nope")


def test_resolve_preset_with_flag_overrides():
    spec = resolve_spec("synthetic", target="label", amount=None, drop=("note",))
    assert spec.target == "label"
    assert spec.drop == ("note",)
    # None means "not given": the preset value stays
    assert spec.amount == "amount"
    assert spec.timestamp == SYNTHETIC.timestamp
    # the preset itself is untouched
    assert SYNTHETIC.target == "is_fraud"


def test_resolve_flags_only_builds_a_custom_spec():
    spec = resolve_spec(target="y", timestamp="ts", categorical=("shop",))
    assert spec == DatasetSpec(name="custom", target="y", timestamp="ts", categorical=("shop",))


def test_resolve_preset_and_config_conflict(tmp_path):
    cfg = tmp_path / "data.yaml"
    cfg.write_text("target: y\n")
    with pytest.raises(ConfigError, match="either a preset or a dataset config file"):
        resolve_spec("synthetic", cfg)


def test_resolve_config_file_yaml_with_overrides(tmp_path):
    cfg = tmp_path / "shop.yaml"
    cfg.write_text(
        "name: shop\n"
        "target: fraud\n"
        "timestamp: created\n"
        "time_format: '%Y-%m-%d %H:%M'\n"
        "account: customer\n"
        "entities: [card, email_domain]\n"
        "amount: total\n"
        "categorical: [channel]\n"
        "drop: [notes]\n"
        "id_column: order_id\n"
    )
    spec = resolve_spec(config_file=cfg)
    assert spec.name == "shop"
    assert spec.entities == ("card", "email_domain")
    assert spec.categorical == ("channel",)
    assert spec.time_format == "%Y-%m-%d %H:%M"
    overridden = resolve_spec(config_file=str(cfg), amount="net_total")
    assert overridden.amount == "net_total"
    assert overridden.account == "customer"


def test_load_json_config(tmp_path):
    cfg = tmp_path / "shop.json"
    cfg.write_text(json.dumps({"target": "fraud", "timestamp": "t", "entities": ["card"], "categorical": ["c"]}))
    spec = load_dataset_config(cfg)
    assert spec == DatasetSpec(target="fraud", timestamp="t", entities=("card",), categorical=("c",))


def test_unknown_key_rejected_naming_it(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("target: fraud\ntimestmap: created\n")
    with pytest.raises(ConfigError) as info:
        load_dataset_config(cfg)
    message = str(info.value)
    assert "timestmap" in message
    assert str(cfg) in message


def test_unknown_key_in_json_rejected(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"target": "fraud", "colour": "blue"}))
    with pytest.raises(ConfigError, match="colour"):
        resolve_spec(config_file=cfg)


def test_unknown_override_rejected():
    with pytest.raises(ConfigError, match="labl"):
        resolve_spec("synthetic", labl="y")


def test_missing_target_rejected(tmp_path):
    cfg = tmp_path / "no_target.yaml"
    cfg.write_text("timestamp: t\n")
    with pytest.raises(ConfigError, match="target"):
        load_dataset_config(cfg)


def test_target_in_drop_rejected(tmp_path):
    cfg = tmp_path / "clash.yaml"
    cfg.write_text("target: fraud\ndrop: [fraud, notes]\n")
    with pytest.raises(ConfigError, match=r"target column 'fraud' cannot be dropped"):
        load_dataset_config(cfg)


def test_target_in_categorical_rejected(tmp_path):
    cfg = tmp_path / "clash.json"
    cfg.write_text(json.dumps({"target": "fraud", "categorical": ["shop", "fraud"]}))
    with pytest.raises(ConfigError, match=r"categorical must not contain.*'fraud'"):
        load_dataset_config(cfg)


def test_role_clash_from_flags_rejected():
    with pytest.raises(ConfigError, match="command-line flags"):
        resolve_spec("synthetic", categorical=("is_fraud",))
    with pytest.raises(ConfigError, match=r"entities must not contain.*purchase_time"):
        resolve_spec("synthetic", entities=("purchase_time",))


def test_config_not_a_mapping(tmp_path):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- target\n- fraud\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_dataset_config(cfg)


def test_config_invalid_syntax(tmp_path):
    cfg = tmp_path / "broken.json"
    cfg.write_text("{target: ")
    with pytest.raises(ConfigError, match="not valid json"):
        load_dataset_config(cfg)
    ycfg = tmp_path / "broken.yaml"
    ycfg.write_text("target: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_dataset_config(ycfg)


def test_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read dataset config"):
        resolve_spec(config_file=tmp_path / "absent.yaml")

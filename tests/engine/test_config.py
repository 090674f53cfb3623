"""Config loading: `_base_` inheritance, precedence, strict keys and types, env expansion."""

import glob
import os

import pytest
import yaml

from pointsup.config import (Config, ConfigError, config_from_dict, config_to_dict, load_config,
                             save_config)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_without_file():
    assert config_to_dict(load_config(None, [])) == config_to_dict(Config())


def test_base_file_and_set_precedence(tmp_path):
    write(tmp_path / "base.yaml", {"solver": {"max_iter": 10, "base_lr": 0.5, "steps": [5]}, "seed": 3})
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", {"_base_": "../base.yaml", "solver": {"max_iter": 20}})
    cfg = load_config(child, ["solver.base_lr=0.25"])
    assert cfg.solver.max_iter == 20  # file > base
    assert cfg.solver.base_lr == 0.25  # --set > base
    assert cfg.solver.steps == [5] and cfg.seed == 3  # base > defaults
    assert cfg.solver.momentum == 0.9  # defaults kept
    cfg = load_config(child, ["solver.max_iter=30"])
    assert cfg.solver.max_iter == 30  # --set > file


def test_list_of_bases_later_wins(tmp_path):
    a = write(tmp_path / "a.yaml", {"seed": 1, "log_period": 7})
    b = write(tmp_path / "b.yaml", {"seed": 2})
    c = write(tmp_path / "c.yaml", {"_base_": ["a.yaml", "b.yaml"]})
    cfg = load_config(c, [])
    assert (cfg.seed, cfg.log_period) == (2, 7)
    assert a and b


def test_unknown_key_names_dotted_key_and_file(tmp_path):
    base = write(tmp_path / "base.yaml", {"model": {"backbone": {"dept": 50}}})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml"})
    with pytest.raises(KeyError) as e:
        load_config(child, [])
    assert "model.backbone.dept" in str(e.value) and base in str(e.value)
    with pytest.raises(KeyError, match=r"solver\.max_iters.*--set"):
        load_config(None, ["solver.max_iters=5"])


@pytest.mark.parametrize("override", [
    "solver.max_iter=1.5", "solver.max_iter=abc", "solver.steps=5", "data.random_flip=1",
    "model.backbone=3", "solver.steps=[1, x]", "output_dir=5",
])
def test_type_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


def test_values_are_parsed_as_yaml_and_coerced():
    cfg = load_config(None, ["solver.steps=[10, 20]", "solver.base_lr=1e-3", "solver.momentum=1",
                             "data.random_flip=false", "model.mask_head.supervision=masks", "output_dir="])
    assert cfg.solver.steps == [10, 20]
    assert cfg.solver.base_lr == 1e-3 and isinstance(cfg.solver.momentum, float)
    assert cfg.data.random_flip is False and cfg.model.mask_head.supervision == "masks"
    assert cfg.output_dir == ""


def test_env_expansion(tmp_path, monkeypatch):
    path = write(tmp_path / "c.yaml", {"data": {"train_json": "${POINTSUP_TEST_ROOT:-datasets}/coco/a.json"}})
    monkeypatch.delenv("POINTSUP_TEST_ROOT", raising=False)
    assert load_config(path, []).data.train_json == "datasets/coco/a.json"
    monkeypatch.setenv("POINTSUP_TEST_ROOT", "/data")
    assert load_config(path, []).data.train_json == "/data/coco/a.json"


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"), [])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["solver.max_iter=7", "model.backbone.depth=50", "data.crop_size=[0.5, 0.6]"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    assert config_to_dict(load_config(str(tmp_path / "config.yaml"), [])) == config_to_dict(cfg)
    assert config_to_dict(config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)


def test_shipped_configs_load():
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert any("mask_rcnn_R_50_FPN_3x_P10.yaml" in p for p in paths)
    for path in paths:
        load_config(path, [])


def test_coco_configs_match_the_paper_setup():
    d = os.path.join(REPO, "configs", "coco")
    masks_1x = load_config(os.path.join(d, "mask_rcnn_R_50_FPN_1x.yaml"))
    assert (masks_1x.solver.max_iter, masks_1x.solver.steps) == (90000, [60000, 80000])
    assert masks_1x.model.mask_head.supervision == "masks"
    assert masks_1x.model.backbone.depth == 50 and masks_1x.model.backbone.norm == "FrozenBN"
    assert masks_1x.solver.ims_per_batch == 16 and masks_1x.solver.warmup_iters == 1000
    p10 = load_config(os.path.join(d, "mask_rcnn_R_50_FPN_3x_P10.yaml"))
    assert (p10.solver.max_iter, p10.solver.steps) == (270000, [210000, 250000])
    assert p10.model.mask_head.supervision == "points" and "points_n10" in p10.data.train_json
    assert not p10.data.point_aug
    aug = load_config(os.path.join(d, "mask_rcnn_R_50_FPN_3x_P10_point_aug.yaml"))
    assert aug.data.point_aug and aug.model.mask_head.supervision == "points"

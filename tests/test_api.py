"""The Python API, as lightning-hydra-template's tests use theirs: a config composed with Hydra's compose API, with or
without its hydra node, trained and evaluated in this process."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from conftest import CONF


def test_train_then_evaluate_in_process_as_the_templates_tests_do(data_root, tmp_path):
    from tinyvision import evaluate, train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["model=convnet", "data=mnist", "data.val_size=50", "trainer.max_epochs=1", "logger=none",
                                 "callbacks=minimal"])
    with open_dict(cfg):  # the template's fixture: the run's paths set by hand, then Hydra's node made current
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(data_root)
    HydraConfig().set_config(cfg)
    try:
        metrics = train(cfg)
    finally:
        HydraConfig.instance().cfg = None  # the tests after this one in this process compose without it
    assert metrics["epochs"] == 1 and json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # no hydra node: paths set as overrides
        eval_cfg = compose(config_name="eval", overrides=[f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
                                                          f"paths.output_dir={tmp_path / 'eval'}", f"paths.data_dir={data_root}"])
    tested = evaluate(eval_cfg)
    assert tested["test/acc"] == metrics["test/acc"] and (tmp_path / "eval" / "metrics.json").is_file()

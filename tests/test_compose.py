"""Every option of every config group composes with the others and trains."""

from __future__ import annotations

import hydra.utils
import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException

from tinyvision.config import validate_train
from tinyvision.models import MODELS as REGISTERED
from tinyvision.schema import defaults_of
from tinyvision.training import build, train

# Every registered architecture, found by name; timm's and torchvision's need a library name (tests/test_any_model.py).
MODELS = [name for name in REGISTERED if name not in ("timm", "torchvision")]
DATASETS = ["mnist", "fashion", "cifar10", "folder"]


def data_overrides(dataset: str) -> list[str]:
    overrides = [f"data={dataset}", "data.batch_size=8", "data.eval_batch_size=16", "data.val_size=16"]
    if dataset == "folder":
        overrides += ["data.root=${paths.data_dir}/ants_bees", "data.image_size=32", "data.num_workers=0"]
    return overrides


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_on_every_dataset(make_config, model, dataset):
    cfg = make_config(f"model={model}", *data_overrides(dataset), "trainer=debug", "logger=none")
    metrics = train(cfg)
    # trainer=debug is one batch of each stage (fast_dev_run): too short to learn or to see a loss fall; this checks
    # that each composition runs.
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["history"] and metrics["history"][0]["train/loss"] > 0


@pytest.mark.parametrize("experiment", ["convnet_mnist", "mlp_mnist", "lenet_fashion", "cifar_net", "cifar_net_v3", "vgg16_cifar10"])
def test_every_seed_experiment_composes_with_its_recipe(make_config, experiment):
    cfg = make_config(f"experiment={experiment}")
    recipes = {
        "convnet_mnist": ("ConvNet", "mnist", "Adam", 512, 20),
        "mlp_mnist": ("MLP", "mnist", "SGD", 64, 10),
        "lenet_fashion": ("LeNet", "fashion", "SGD", 256, 10),
        "cifar_net": ("CifarNet", "cifar10", "SGD", 64, 20),
        "cifar_net_v3": ("CifarNetV3", "cifar10", "SGD", 32, 150),
        "vgg16_cifar10": ("VGG16", "cifar10", "SGD", 64, 20),
    }
    model, dataset, optimizer, batch_size, epochs = recipes[experiment]
    assert cfg.model._target_.endswith(model)
    assert cfg.data.dataset == dataset
    assert cfg.optimizer._target_.endswith(optimizer)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (batch_size, epochs)


def test_lenet_fashion_is_seed_002(make_config):
    cfg = make_config("experiment=lenet_fashion")
    assert cfg.optimizer.lr == 0.9 and list(cfg.data.mean) == [0.0] and list(cfg.data.std) == [1.0]


def test_cifar_net_v3_is_seed_003(make_config):
    cfg = make_config("experiment=cifar_net_v3")
    assert list(cfg.data.augment.crop_padding) == [0, 2, 3, 4] and cfg.data.augment.horizontal_flip == 0.5
    assert list(cfg.scheduler.milestones) == [8, 16, 24, 32] and cfg.scheduler.gamma == 0.5
    assert cfg.optimizer.momentum == 0.9


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("scheduler", ["none", "step", "multistep", "cosine", "onecycle"])
def test_every_optimizer_and_scheduler_steps(make_config, optimizer, scheduler):
    cfg = make_config(
        "model=mlp", f"optimizer={optimizer}", f"scheduler={scheduler}", "trainer=cpu", "trainer.max_epochs=2",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "logger=none", "data.batch_size=8", "data.val_size=16",
    )
    metrics = train(cfg)
    lrs = [row["train/lr"] for row in metrics["history"]]
    assert len(lrs) == 2 and all(lr > 0 for lr in lrs)
    if scheduler in ("step", "none"):  # StepLR decays only after 10 epochs
        assert lrs[0] == pytest.approx(cfg.optimizer.lr)
    if scheduler == "onecycle":  # stepped per batch: warming up from max_lr / 25
        assert lrs[0] < cfg.optimizer.lr


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp", "debug"])
def test_every_trainer_composes(make_config, trainer):
    cfg = make_config(f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer in ("default", "cpu", "debug") or (trainer == "gpu" and torch.cuda.is_available()):
        assert isinstance(hydra.utils.instantiate(cfg.trainer, logger=False), L.Trainer)
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_unknown_option_lists_the_choices(make_config):
    with pytest.raises(ConfigCompositionException, match="Available options in 'model'") as error:
        make_config("model=lenett")
    assert "lenet" in str(error.value) and "cifar_net_v3" in str(error.value)


def test_lenet_on_cifar10_and_cifar_net_v3_on_mnist_take_their_shapes(make_config):
    _, lenet = build(validate_train(make_config("model=lenet", "data=cifar10"), look_outside=False))
    assert lenet.net.features[0].in_channels == 3
    _, v3 = build(validate_train(make_config("model=cifar_net_v3", "data=mnist"), look_outside=False))
    assert v3.net.features[0].in_channels == 1 and v3.net.classifier[1].in_features == 128 * 3 * 3


@pytest.mark.parametrize("script, folder", [("eval", "outputs/eval/"), ("export", "outputs/export/"),
                                            ("predict", "outputs/predict/"), ("lr_find", "outputs/lr_find/"),
                                            ("train", "outputs/runs/")])
def test_each_command_writes_into_its_own_outputs_folder(script, folder):
    """Each command's own hydra.run.dir wins over hydra/default's (an eval once landed in outputs/runs/<time>_None_None,
    where its metrics.json looked like a finished training run's)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from conftest import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(script, overrides=["+ckpt_path=x"] if script in ("eval", "export", "predict") else [],
                      return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert run_dir.startswith(folder) or f",{folder}" in run_dir  # train: its own, unless resuming


@pytest.mark.parametrize("name", list(REGISTERED))
def test_each_registered_architecture_has_its_config_and_its_defaults_come_from_its_code(name, make_config):
    """conf/model/<name>.yaml names the registered class and composes to its settings' defaults (from the constructor's
    signature), and holds no second copy of any of them: the YAML holds choices."""
    import yaml

    from conftest import CONF

    registered = REGISTERED[name]
    written = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    assert written["_target_"] == registered.target
    defaults = defaults_of(registered.settings)
    assert not {key for key, value in written.items() if key in defaults and defaults[key] == value}
    composed = make_config(f"model={name}").model
    assert {key: composed[key] for key in defaults} == defaults
    assert "channels_last" in defaults and defaults["channels_last"] is True  # the common keys come with every model



@pytest.mark.parametrize("dataset", ["mnist", "fashion", "folder", "cifar10"])
def test_every_augmentation_key_reaches_each_data_config_from_its_settings(dataset, make_config):
    """data.augment holds every AugmentSettings field, at its declared default unless the dataset chooses otherwise
    (CIFAR's crop and flip), so any knob can be set from the command line without +."""
    import yaml

    from conftest import CONF
    from tinyvision.data.augment import AugmentSettings

    chosen = (yaml.safe_load((CONF / "data" / f"{dataset}.yaml").read_text()) or {}).get("augment") or {}
    composed = make_config(*data_overrides(dataset)).data.augment
    assert dict(composed) == {**defaults_of(AugmentSettings), **chosen}


def test_no_config_file_repeats_a_default_its_settings_node_gives():
    """Every conf/ file that lists a tinyvision/... defaults node (an architecture's, the augmentation's, an
    optimizer's, a schedule's) holds only choices: no key with the value the node already gives it."""
    import yaml

    from conftest import CONF
    from tinyvision.config import defaults_nodes

    nodes, checked = defaults_nodes(), 0
    for path in sorted(CONF.rglob("*.yaml")):
        written = yaml.safe_load(path.read_text()) or {}
        for entry in written.get("defaults") or []:
            if not (isinstance(entry, str) and entry.startswith("/tinyvision/")):
                continue
            node_path, _, package = entry[1:].partition("@")
            node = nodes[node_path]
            section = written if package == "_here_" else written.get(package.split(".")[-1]) or {}
            repeated = {key for key, value in section.items() if key in node and node[key] == value}
            assert not repeated, f"{path.relative_to(CONF)} repeats {node_path}'s defaults: {sorted(repeated)}"
            checked += 1
    assert checked >= 9 + 2 + 3 + 4  # the architectures, two data configs, the optimizers and the schedules


def test_the_defaults_files_under_conf_are_the_code_s_defaults():
    """conf/tinyvision/ holds the settings models' defaults as YAML, written by `python -m tinyvision.config`, so that
    composing a config never imports torch: a default changed in the code and not written out fails here."""
    from conftest import CONF
    from tinyvision.config import GENERATED_HEADER, defaults_files

    wanted = defaults_files()
    present = {str(path.relative_to(CONF)): path.read_text() for path in (CONF / "tinyvision").rglob("*.yaml")}
    stale = sorted(name for name in wanted.keys() | present.keys() if wanted.get(name) != present.get(name))
    assert not stale, f"run python -m tinyvision.config: {stale} differ from the code's defaults"
    assert all(text.startswith(GENERATED_HEADER) for text in present.values())


@pytest.mark.parametrize("script", ["eval", "predict", "export", "audit"])
def test_a_script_s_config_and_its_settings_give_each_key_the_same_default(script):
    """A key of a script's own (batch_size, top_k, format, ...) has one default: the value conf/<script>.yaml gives it
    is the default its settings model declares (eval's batch size was 1024 in the YAML and null in the code)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from pydantic_core import PydanticUndefined

    from conftest import CONF
    from tinyvision.audit import AuditSettings
    from tinyvision.export import ExportSettings
    from tinyvision.inference import EvalSettings, PredictSettings

    settings = {"eval": EvalSettings, "predict": PredictSettings, "export": ExportSettings, "audit": AuditSettings}[script]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        composed = compose(script)
    written = OmegaConf.to_container(composed, resolve=False)
    compared = 0
    for name, field in settings.model_fields.items():
        value = written.get(name)
        if field.default is PydanticUndefined or name not in written or value == "???" or isinstance(value, (dict, list)) \
                or "${" in str(value):
            continue  # required on the command line, a section, or a value the run resolves
        assert value == field.default, f"conf/{script}.yaml {name}: {value!r}, its settings: {field.default!r}"
        compared += 1
    assert compared >= 1

"""Bad input fails before training with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest

from conftest import ROOT
from tinyvision.errors import ConfigError
from tinyvision.training import train

SCRIPTS = {"train": ROOT / "train.py", "eval": ROOT / "eval.py", "predict": ROOT / "predict.py", "export": ROOT / "export.py",
           "lr_find": ROOT / "find_lr.py"}
NOT_A_CHECKPOINT = "NOT_A_CHECKPOINT"  # replaced by the path of a text file named .ckpt

# (script, command line, the start of the one error line). Every group, and all four commands.
CASES = [
    ("train", ["seed=abc"], "seed=abc: a whole number"),
    ("train", ["seed=-1"], "seed=-1: a whole number from 0"),
    ("train", ["resume=/nonexistent/run"], "resume=/nonexistent/run does not exist"),
    ("train", ["optimizer.lr=0"], "optimizer.lr=0: a positive number, e.g. optimizer.lr=0.01"),
    ("train", ["optimizer=sgd", "optimizer.lr=-0.1"], "optimizer.lr=-0.1: a positive number"),
    ("train", ["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum=-1: a number from 0 to below 1"),
    ("train", ["optimizer=sgd", "optimizer.nesterov=true"], "optimizer.nesterov=true: only with momentum above 0"),
    ("train", ["optimizer=adam", "+optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: two numbers"),
    ("train", ["optimizer=adamw", "optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: a number, 0 or more"),
    ("train", ["optimizer.learning_rate=0.1"],
     "optimizer.learning_rate=0.1: no key 'learning_rate' in optimizer; did you mean optimizer.lr?"),
    ("train", ["optimizer=rmsprop"], "optimizer=rmsprop: no option 'rmsprop' in optimizer/; choose one of adam, adamw, sgd"),
    ("train", ["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0: a whole number of epochs, 1 or more"),
    ("train", ["scheduler=multistep", "scheduler.milestones=abc"], "scheduler.milestones=abc: a rising list of epochs"),
    ("train", ["scheduler=multistep", "scheduler.milestones=[5,3]"], "scheduler.milestones=[5,3]: a rising list of epochs"),
    ("train", ["scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start=1.5: a fraction between 0 and 1"),
    ("train", ["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max=0: auto (trainer.max_epochs) or a number of epochs"),
    ("train", ["scheduler=step", "scheduler.interval=batch"], "scheduler.interval=batch: epoch or step"),
    ("train", ["data=folder"], "data.root=??? is required: give it on the command line, e.g. data.root="),
    ("train", ["data=folder", "data.root=/nonexistent/images"], "data.root=/nonexistent/images does not exist"),
    ("train", ["data.augment.crop_padding=[1,2,3]"], "data.augment.crop_padding=[1,2,3]: null, a number of pixels"),
    ("train", ["data.augment.horizontal_flip=2"], "data.augment.horizontal_flip=2: a probability from 0 to 1"),
    ("train", ["data.channels=0"], "data.channels=0: 1 (grey) or 3 (colour)"),
    ("train", ["data.std=[0]"], "data.std=[0]: one positive number"),
    ("train", ["data=mnist", "data.mean=[0.1,0.2]"], "data.mean=[0.1,0.2]: one value (data.channels=1)"),
    ("train", ["data.batch_size=0"], "data.batch_size=0: a whole number of images, 1 or more"),
    ("train", ["data.batch_size=1.5"], "data.batch_size=1.5: a whole number of images"),
    ("train", ["data.val_size=0"], "data.val_size=0: a number of images (1 or more) or a fraction"),
    ("train", ["data=mnist", "data.val_size=500"], "data.val_size=500 does not fit the training split of mnist (400 images)"),
    ("train", ["data.num_classes=1"], "data.num_classes=1: a whole number, 2 or more"),
    ("train", ["data.image_size=[28]"], "data.image_size=[28]: a size in pixels"),
    ("train", ["data=imagenet"], "data=imagenet: no option 'imagenet' in data/"),
    ("train", ["model=lenett"], "model=lenett: no option 'lenett' in model/; choose one of"),
    ("train", ["model=lenet", "data=mnist", "data.image_size=8"], "model lenet cannot take image_size=8"),
    ("train", ["model=mlp", "model.hidden=[0]"], "model.hidden=[0]: a list of layer widths, each 1 or more"),
    ("train", ["model=mlp", "model.activation=swishy"], "model.activation=swishy: relu, sigmoid, tanh or gelu"),
    ("train", ["model=vgg16", "model.weights=NOPE"], "model.weights=NOPE: null or a torchvision VGG16 weights name"),
    ("train", ["model=cifar_net_v3", "model.dropout=1.5"], "model.dropout=1.5: a probability from 0 to below 1"),
    ("train", ["model.channels_last=maybe"], "model.channels_last=maybe: true or false"),
    ("train", ["trainer.max_epochs=-2"], "trainer.max_epochs=-2: a whole number, 1 or more (-1: no limit)"),
    ("train", ["trainer.max_epoch=3"], "trainer.max_epoch=3: no key 'max_epoch' in trainer; did you mean trainer.max_epochs?"),
    ("train", ["+trainer.max_epoch=3"], "trainer.max_epoch=3: Lightning's Trainer has no such argument; did you mean trainer.max_epochs?"),
    ("train", ["trainer.accelerator=tpu"], "trainer.accelerator=tpu: "),
    ("train", ["trainer.devices=0"], "trainer.devices=0: `Trainer(devices=0)` value is not a valid input"),
    ("train", ["trainer.precision=13"], "trainer.precision=13: Precision 13 is invalid. Allowed precision values"),
    ("train", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0: a whole number, 1 or more"),
    ("train", ["trainer=tpu_pod"], "trainer=tpu_pod: no option 'tpu_pod' in trainer/"),
    ("train", ["callbacks=default", "callbacks.stop_on_non_finite_loss.check_every_n_steps=0"],
     "callbacks.stop_on_non_finite_loss.check_every_n_steps=0: a whole number of steps, 1 or more"),
    ("train", ["callbacks.last_checkpoint.every_n_train_steps=0"], "callbacks.last_checkpoint.every_n_train_steps=0: a whole number"),
    ("train", ["hparams_search=lenet_fashion"], "hparams_search=lenet_fashion runs an Optuna study of many runs: add -m"),
    ("train", ["-m", "model=lenet,nope"], "model=nope: no option 'nope' in model/"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.n_trials=0"],
     "hparams_search.n_trials=0: a whole number, 1 or more"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.metric=val/accuracy"],
     "hparams_search.metric=val/accuracy: one of val/acc_best"),
    ("train", ["paths.data_dir=null"], "paths.data_dir=null: a directory path"),
    ("train", ["callbacks.test_report.top_k=0"], "callbacks.test_report.top_k=0: a whole number, 1 or more"),
    ("train", ["callbacks.progress_bar.refresh_seconds=-1"],
     "callbacks.progress_bar.refresh_seconds=-1: a number of seconds, 0 or more"),
    ("train", ["callbacks.stop_on_non_finite_loss.read_on_cpu=sometimes"],
     "callbacks.stop_on_non_finite_loss.read_on_cpu=sometimes: true or false"),
    ("train", ["logger=mlfow"], "logger=mlfow: no option 'mlfow' in logger/"),
    ("train", ["model=timm", "model.name=resnet_18"], "model.name=resnet_18: a timm architecture name"),
    ("train", ["model=torchvision", "model.name=resnet18", "model.weights=IMAGENET"],
     "model.weights=IMAGENET: resnet18's weights are IMAGENET1K_V1, DEFAULT, e.g. model.weights=IMAGENET1K_V1"),
    ("train", ["model=torchvision", "model.weights_path=/nonexistent/resnet18.pth"],
     "model.weights_path=/nonexistent/resnet18.pth does not exist"),
    ("train", ["model.freeze=all"], "model.freeze=all: null or backbone (train the head only)"),
    ("train", ["optimizer.backbone_lr_scale=-1"], "optimizer.backbone_lr_scale=-1: a number, 0 or more"),
    ("train", ["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1: a number of epochs, 0 or more"),
    ("train", ["scheduler=onecycle", "+scheduler.warmup_epochs=1"],
     "scheduler.warmup_epochs=1: 0: one-cycle warms up by itself (scheduler.pct_start)"),
    ("train", ["tta=rotate"], "tta=rotate: none, flip or flip_translate"),
    ("train", ["callbacks.ema.decay=1"], "callbacks.ema.decay=1: a number from 0 (off) to below 1"),
    ("train", ["data.augment.mixup_alpha=-0.2"], "data.augment.mixup_alpha=-0.2: a number, 0 (off) or more"),
    ("train", ["loss.label_smoothing=1"], "loss.label_smoothing=1: a number from 0 to below 1"),
    ("train", ["loss.class_weights=balanced"], "loss.class_weights=balanced: null, auto or a list of positive weights"),
    ("train", ["loss.class_weights=[1,2]"], "loss.class_weights=[1,2]: one weight per class (10 for data.num_classes=10)"),
    ("train", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: a whole number of batches, 1 or more"),
    ("train", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1: a positive number, or null"),
    ("train", ["-m", "seed=1,2", "trainer.max_epoch=1"], "trainer.max_epoch=1: no key 'max_epoch' in trainer"),
    ("eval", [], "ckpt_path=??? is required: give it on the command line, e.g. ckpt_path="),
    ("eval", ["ckpt_path=/nonexistent/best.ckpt"], "ckpt_path=/nonexistent/best.ckpt does not exist"),
    ("eval", [f"ckpt_path={NOT_A_CHECKPOINT}"], "ckpt_path="),
    ("eval", ["ckpt_path=x.ckpt", "batch_size=0"], "batch_size=0: a whole number of images, 1 or more"),
    ("eval", ["ckpt_path=x.ckpt", "bacth_size=5"], "bacth_size=5: no key 'bacth_size' in the config; did you mean batch_size?"),
    ("eval", ["ckpt_path=x.ckpt", "data=imagenet"], "data=imagenet: no option 'imagenet' in data/"),
    ("predict", [], "ckpt_path=??? is required"),
    ("eval", ["ckpt_path=x.ckpt", "top_k=0"], "top_k=0: a whole number, 1 or more"),
    ("eval", ["ckpt_path=x.ckpt", "tta=all"], "tta=all: none, flip or flip_translate"),
    ("lr_find", ["lr_find.min_lr=2", "lr_find.max_lr=1"], "lr_find.min_lr=2: below lr_find.max_lr=1, e.g. lr_find.min_lr=1e-06"),
    ("lr_find", ["lr_find.min_lr=abc"], "lr_find.min_lr=abc: a positive number below lr_find.max_lr"),
    ("lr_find", ["lr_find.num_training=0"], "lr_find.num_training=0: a whole number of steps, 20 or more"),
    ("train", ["logger=mlflow", "logger.mlflow.tracking_uri=bogus://x"], "logger.mlflow.tracking_uri=bogus://x: a tracking URI"),
    ("train", ["logger=mlflow", "logger.mlflow.experiment_name=null"], "logger.mlflow.experiment_name=null: a name"),
    ("lr_find", ["model=lenett"], "model=lenett: no option 'lenett' in model/"),
    ("export", [], "ckpt_path=??? is required: give it on the command line, e.g. ckpt_path="),
    ("export", ["ckpt_path=x.ckpt", "format=pdf"], "format=pdf: onnx, torchscript or safetensors"),
    ("export", ["ckpt_path=/nonexistent/best.ckpt"], "ckpt_path=/nonexistent/best.ckpt does not exist"),
    ("export", [f"ckpt_path={NOT_A_CHECKPOINT}"], "ckpt_path="),
    ("export", ["ckpt_path=x.ckpt", "fromat=onnx"], "fromat=onnx: no key 'fromat' in the config; did you mean format?"),
    ("predict", ["ckpt_path=/nonexistent/model.onnx", "inputs=photos"], "ckpt_path=/nonexistent/model.onnx does not exist"),
    ("predict", ["ckpt_path=x.ckpt"], "inputs=??? is required: give it on the command line, e.g. inputs="),
    ("predict", ["ckpt_path=x.ckpt", "inputs=photos", "top_k=0"], "top_k=0: a whole number, 1 or more"),
    ("predict", ["ckpt_path=x.ckpt", "inputs=photos", "style=cartoon"], "style=cartoon: auto, digit, clothing or plain"),
    ("predict", ["ckpt_path=x.ckpt", "inputs=photos", "topk=3"], "topk=3: no key 'topk' in the config; did you mean top_k?"),
    ("predict", ["ckpt_path=/nonexistent/best.ckpt", "inputs=photos"], "ckpt_path=/nonexistent/best.ckpt does not exist"),
]


def run_in_process(script: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run a script's __main__ in this process (as `python SCRIPT ARGS`): its exit status and stderr."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS[script]), *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(SCRIPTS[script]), run_name="__main__")
    GlobalHydra.instance().clear()
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("script", "argv", "expected"), CASES, ids=[" ".join([s, *a]) or s for s, a, _ in CASES])
def test_bad_input_gets_one_line_and_exit_status_2(script, argv, expected, data_root, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    argv = [a.replace(NOT_A_CHECKPOINT, str(not_a_checkpoint)) for a in argv]
    extra = [f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    if script == "train":
        extra += [f"{key}={value}" for key, value in (("logger", "tensorboard"), ("paths.data_dir", data_root))
                  if not any(a.startswith(f"{key}=") for a in argv)]
    status, stderr = run_in_process(script, [*argv, *extra], monkeypatch, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), stderr[-3000:]
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr
    for leftover in ("checkpoints", "metrics.json", "tensorboard"):
        assert not (run_dir / leftover).exists(), leftover
        assert not list((tmp_path / "sweep").glob(f"*/{leftover}")), leftover


def test_a_refusal_from_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "data.augment.horizontal_flip=2", f"hydra.run.dir={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: data.augment.horizontal_flip=2: a probability from 0 to 1, e.g. data.augment.horizontal_flip=0.5"
    ]


def test_class_folder_without_images_is_named(make_config, tmp_path, data_root):
    root = tmp_path / "images"
    (root / "ants").mkdir(parents=True)
    (root / "bees").mkdir()
    for image in (data_root / "ants_bees" / "ants").iterdir():
        (root / "ants" / image.name).write_bytes(image.read_bytes())
    (root / "bees" / "notes.txt").write_text("no images here")
    cfg = make_config("data=folder", f"data.root={root}", "logger=none")
    with pytest.raises(ConfigError, match=f"class folder {root / 'bees'} holds no images .*add images or remove the folder"):
        train(cfg)


def test_an_existing_run_is_never_overwritten(make_config, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier work")
    with pytest.raises(ConfigError, match="already holds a run: it is kept as it is"):
        train(make_config("trainer=debug", "logger=none"))
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"earlier work"

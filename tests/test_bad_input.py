"""Bad input fails before training with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_boundaries_input import write_checkpoint

from conftest import ROOT
from tinyvision.errors import ConfigError
from tinyvision.training import train

SCRIPTS = {"train": ROOT / "train.py", "eval": ROOT / "eval.py", "predict": ROOT / "predict.py", "export": ROOT / "export.py",
           "lr_find": ROOT / "find_lr.py"}
# Words in a command line replaced by paths the test makes (see test_bad_input_gets_one_line_and_exit_status_2):
NOT_A_CHECKPOINT = "NOT_A_CHECKPOINT"  # a text file named .ckpt
EMPTY_FILE = "EMPTY_FILE"  # an empty file named .ckpt
TEXT = "{} is text (quoted, or from ${{oc.env:...}}, which always gives text): "  # a number in quotes, or from oc.env
A_FILE = "A_FILE"  # a plain file, in the way of a folder path
CHECKPOINT = "CHECKPOINT"  # a real checkpoint of a LeNet on Fashion-MNIST's shapes (tests/test_boundaries_input.py)
ONE_CLASS = "ONE_CLASS"  # an image folder with one class folder
TWO_CLASSES = "TWO_CLASSES"  # the ants/bees image folder of tests/conftest.py
TEXT_IMAGE = "TEXT_IMAGE"  # a text file named .png
EMPTY_IMAGE = "EMPTY_IMAGE"  # an empty file named .png
A_CARD = "A_CARD"  # a JSON file of another kind (a model's card)
CLOSED = "127.0.0.1:9"  # the discard port, closed: a connection to it is refused at once
SHORT_MNIST = ["data=mnist", "data.val_size=50", "data.batch_size=64"]  # 350 training images: 6 batches an epoch

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
    # a sweep's bad value is refused before its good values train, as a single run's would be
    ("train", ["-m", "optimizer.lr=0.01,-1"], "optimizer.lr=-1: a positive number, e.g. optimizer.lr=0.01"),
    ("train", ["-m", "data.folds=3", "data.fold=range(5)"], "data.fold=3: a fold from 0 to 2 (data.folds=3)"),
    ("train", ["-m", "optimizer.lr=choice()"], "optimizer.lr=choice(): cannot be read as KEY=VALUE (ValueError while "
                                               "evaluating 'choice()': empty choice is not legal)"),
    ("train", ["-m", "data.batch_size=range(0)"], "data.batch_size=range(0): the range holds no value"),
    ("train", ["-m", "optimizer.lr=interval(0.001,0.01)"],
     "optimizer.lr=interval(0.001,0.01): interval() is a range for an Optuna search (add hparams_search=optuna)"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.n_trials=0"],
     "hparams_search.n_trials=0: a whole number, 1 or more"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.metric=val/accuracy"],
     "hparams_search.metric=val/accuracy: val/acc_best, val/acc, val/loss"),
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
    ("train", ["scheduler=onecycle", "scheduler.warmup_epochs=1"],
     "scheduler.warmup_epochs=1: 0: one-cycle warms up by itself (scheduler.pct_start)"),
    ("train", ["tta=rotate"], "tta=rotate: none, flip or flip_translate"),
    ("train", ["callbacks.ema.decay=1"], "callbacks.ema.decay=1: a number from 0 (off) to below 1"),
    # a key the callback's constructor does not take, added with +: refused by its settings, not by a TypeError
    ("train", ["data.augment.grayscale=true"], "data.augment.grayscale=true: a probability from 0 to 1 (not true or false)"),
    ("train", ["+callbacks.pictures.foo=1"], "callbacks.pictures.foo=1: no such key; the keys here are input_grid"),
    ("train", ["model._target_=mynet.MyNet"], "model._target_=mynet.MyNet: it cannot be imported (ModuleNotFoundError"),
    ("train", ["callbacks.ema._target_=tinyvision.callbacks.nope"],
     "callbacks.ema._target_=tinyvision.callbacks.nope: it cannot be imported (AttributeError"),
    ("train", ["data.augment.mixup_alpha=-0.2"], "data.augment.mixup_alpha=-0.2: a number, 0 (off) or more"),
    ("train", ["loss.label_smoothing=1"], "loss.label_smoothing=1: a number from 0 to below 1"),
    ("train", ["loss.class_weights=balanced"], "loss.class_weights=balanced: null, auto or a list of positive weights"),
    ("train", ["loss.class_weights=[1,2]"], "loss.class_weights=[1,2]: one weight per class (10 for data.num_classes=10)"),
    ("train", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: a whole number of batches, 1 or more"),
    ("train", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1: a positive number, or null"),
    ("train", ["-m", "seed=1,2", "trainer.max_epoch=1"], "trainer.max_epoch=1: no key 'max_epoch' in trainer"),
    ("eval", [], "ckpt_path=??? is required: give it on the command line, e.g. ckpt_path="),
    ("eval", ["ckpt_path=/nonexistent/best.ckpt"], "ckpt_path=/nonexistent/best.ckpt does not exist"),
    ("eval", [f"ckpt_path={NOT_A_CHECKPOINT}"], "ckpt_path=NOT_A_CHECKPOINT cannot be read: it is a text file, not a PyTorch checkpoint"),
    ("eval", ["ckpt_path=x.ckpt", "batch_size=0"], "batch_size=0: a whole number of images, 1 or more"),
    ("eval", ["ckpt_path=x.ckpt", "bacth_size=5"], "bacth_size=5: no key 'bacth_size' in the config; did you mean batch_size?"),
    # added with + (Hydra takes it): refused by eval's settings, not carried along unused
    ("eval", ["ckpt_path=x.ckpt", "+bacth_size=5"], "bacth_size=5: no such key; did you mean batch_size?"),
    ("eval", ["ckpt_path=x.ckpt", "trainer.devices=2"], "trainer.devices=2: 1, auto, or a list of one device index"),
    ("eval", ["ckpt_path=x.ckpt", "trainer.accelerator=gpu"], "trainer.accelerator=gpu: no GPU is available here"),
    ("eval", ["ckpt_path=x.ckpt", "trainer.limit_test_batches=0"], "trainer.limit_test_batches=0: a number of batches"),
    ("eval", [f"ckpt_path={CHECKPOINT}", "data=fashion", "trainer.limit_test_batches=0.001"],
     "trainer.limit_test_batches=0.001: less than one of the test's batches (You requested to check 0.001 of the"),
    ("eval", ["ckpt_path=x.ckpt", "++trainer.max_epochs=3"], "trainer.max_epochs=3: no such key"),
    ("predict", ["ckpt_path=x.ckpt", "inputs=photos", "+topk=3"], "topk=3: no such key; did you mean top_k?"),
    ("train", ["+bacth_size=5"], "bacth_size=5: no such key; did you mean data.batch_size?"),
    ("train", ["modl=lenet", "--help"], "modl=lenet: no key 'modl' in the config; did you mean model?"),  # help for what?
    # a path longer than a file system allows: refused before anything reads or writes it
    ("train", ["resume=/tmp/" + "x" * 300], "resume=/tmp/" + "x" * 35 + "... : a name in it is 300 bytes, more than a file"),
    ("predict", [f"ckpt_path={CHECKPOINT}", "inputs=/tmp/" + "x" * 300 + ".png"], "inputs=/tmp/xxxx"),
    ("export", [f"ckpt_path={CHECKPOINT}", "output=/tmp/" + "y" * 248 + ".onnx"],
     "output=/tmp/" + "y" * 248 + ".onnx: with the card beside it (" + "y" * 10 + ".onnx.json) a name would be 258 bytes"),
    # a strategy that trains in processes it spawns hands back no record: refused, not a metrics.json of 0 epochs
    ("train", ["trainer=ddp", "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu"],
     "trainer.strategy=ddp_spawn: a strategy whose rank 0 is this process: ddp"),
    # what Hydra's parser or a library answered with a traceback or several lines
    ("train", ["seed=" + "9" * 5000], "seed=999999999999... (5000 digits): a number that long is a typo"),
    ("train", ["optimizer.lr=0.1\n2"], "optimizer.lr=0.1\\n2: a value has no line break: give it on one line"),
    ("train", ["callbacks.checkpoint.save_top_k=abc"],
     "callbacks.checkpoint: lightning.pytorch.callbacks.ModelCheckpoint refused its settings ("),
    ("train", ["model._target_=torch.nn.Identity"], "model._target_=torch.nn.Identity: the network has no weights to train"),
    ("train", [f"paths.data_dir={A_FILE}/data"], "paths.data_dir=A_FILE/data: A_FILE is a file, not a folder"),
    ("train", [f"callbacks.last_checkpoint.dirpath={A_FILE}/ck"],
     "callbacks.last_checkpoint.dirpath=A_FILE/ck: A_FILE is a file, not a folder"),
    # one settings model serves both data modules: a key only the other one takes
    ("train", ["data=mnist", "+data.num_workers=0"],
     "data.num_workers=0: a key of data=folder's data module that data=mnist does not take"),
    ("train", ["+ckpt_path=outputs/runs/r/checkpoints/last.ckpt"],
     "ckpt_path=outputs/runs/r/checkpoints/last.ckpt: train.py continues a run from its folder: resume=outputs/runs/<run>"),
    ("eval", ["ckpt_path=x.ckpt", "data=imagenet"], "data=imagenet: no option 'imagenet' in data/"),
    ("predict", [], "ckpt_path=??? is required"),
    ("eval", ["ckpt_path=x.ckpt", "top_k=0"], "top_k=0: a whole number, 1 or more"),
    ("eval", ["ckpt_path=x.ckpt", "tta=all"], "tta=all: none, flip or flip_translate"),
    ("lr_find", ["lr_find.min_lr=2", "lr_find.max_lr=1"], "lr_find.min_lr=2: below lr_find.max_lr=1, e.g. lr_find.min_lr=1e-06"),
    ("lr_find", ["lr_find.min_lr=abc"], "lr_find.min_lr=abc: a positive number below lr_find.max_lr"),
    ("lr_find", ["lr_find.num_training=0"], "lr_find.num_training=0: a whole number of steps, 20 or more"),
    ("train", ["logger=mlflow", "logger.mlflow.tracking_uri=bogus://x"], "logger.mlflow.tracking_uri=bogus://x: a tracking URI"),
    ("train", ["logger=mlflow", "logger.mlflow.experiment_name=null"], "logger.mlflow.experiment_name=null: a name"),
    ("train", ["logger=wandb", "logger.wandb.project=a/b"], "logger.wandb.project=a/b: a W&B project name (no / \\ # ? % :"),
    ("train", ["logger=wandb", "logger.wandb.offline=maybe"], "logger.wandb.offline=maybe: null (WANDB_MODE decides"),
    ("train", ["logger=wandb", "logger.wandb.log_model=true"], "logger.wandb.log_model=true: false while W&B logs offline"),
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
    # Kind 1: a user's file that a library reads (text, empty; cut-short files in tests/test_boundaries_input.py)
    ("eval", [f"ckpt_path={EMPTY_FILE}"], "ckpt_path=EMPTY_FILE cannot be read: the file is empty (0 bytes)"),
    ("predict", [f"ckpt_path={NOT_A_CHECKPOINT}", f"inputs={TEXT_IMAGE}"],
     "ckpt_path=NOT_A_CHECKPOINT cannot be read: it is a text file, not a PyTorch checkpoint"),
    ("predict", [f"ckpt_path={EMPTY_FILE}", f"inputs={TEXT_IMAGE}"], "ckpt_path=EMPTY_FILE cannot be read: the file is empty (0 bytes)"),
    ("train", ["model=timm", f"model.weights_path={NOT_A_CHECKPOINT}"],
     "model.weights_path=NOT_A_CHECKPOINT cannot be read: it is a text file, not a PyTorch state dict"),
    ("train", ["model=torchvision", f"model.weights_path={EMPTY_FILE}"], "model.weights_path=EMPTY_FILE cannot be read: the file is empty"),
    ("train", ["model=vgg16", f"model.weights_path={NOT_A_CHECKPOINT}"],
     "model.weights_path=NOT_A_CHECKPOINT cannot be read: it is a text file"),
    # Kind 2: an output path that cannot be a folder of files, refused before any work
    ("eval", ["ckpt_path=model.onnx"], "ckpt_path=model.onnx: an exported ONNX model is for predict.py; here give best.ckpt"),
    ("train", [f"hydra.run.dir={A_FILE}/run"], f"hydra.run.dir: cannot create {A_FILE}/run: Not a directory"),
    ("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={TEXT_IMAGE}", f"output={A_FILE}/predictions.json"],
     f"output={A_FILE}/predictions.json: {A_FILE} is a file, not a folder"),
    # Kind 3: an output that would overwrite a file of another kind (the checkpoint, an input image, a model's card)
    ("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={TEXT_IMAGE}", f"output={CHECKPOINT}"],
     f"output={CHECKPOINT}: this file must end in .json, e.g. output="),
    ("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={TEXT_IMAGE}", f"output={TEXT_IMAGE}"],
     f"output={TEXT_IMAGE}: this file must end in .json"),
    ("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={TEXT_IMAGE}", f"output={A_CARD}"],
     f"output={A_CARD}: {A_CARD} exists and is not a predictions file of predict.py; it is kept as it is"),
    ("train", ["data=folder", f"data.root={TWO_CLASSES}", f"data.cache_dir={A_FILE}/cache"],
     f"data.cache_dir={A_FILE}/cache: {A_FILE} is a file, not a folder"),
    ("train", ["logger=csv", f"logger.csv.save_dir={A_FILE}/logs"], f"logger.csv.save_dir={A_FILE}/logs: {A_FILE} is a file"),
    ("train", ["logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{A_FILE}/mlflow.db"],
     f"logger.mlflow.tracking_uri=sqlite:///{A_FILE}/mlflow.db: {A_FILE} is a file, not a folder"),
    # Kind 3: the network, offline (every address is routed to a closed local port; no download may start)
    ("train", ["model=timm", "model.pretrained=true"],
     "model.pretrained=true: timm's resnet18 weights are not on this machine and cannot be downloaded"),
    ("train", ["model=torchvision", "model.weights=DEFAULT"],
     "model.weights=DEFAULT: torchvision's resnet18 weights (IMAGENET1K_V1) are not on this machine and cannot be downloaded"),
    ("train", ["model=vgg16", "model.weights=IMAGENET1K_V1"], "model.weights=IMAGENET1K_V1: torchvision's vgg16 weights"),
    ("train", ["logger=mlflow", f"logger.mlflow.tracking_uri=http://{CLOSED}/"],
     f"logger.mlflow.tracking_uri=http://{CLOSED}/: no MLflow server answers there ({CLOSED} does not answer"),
    ("train", ["-m", "hparams_search=lenet_fashion", f"hparams_search.storage=journal:{NOT_A_CHECKPOINT}"],
     f"hparams_search.storage=journal:{NOT_A_CHECKPOINT}: {NOT_A_CHECKPOINT} is not an Optuna journal"),
    ("train", ["-m", "hparams_search=lenet_fashion", f"hparams_search.storage=journal:{A_FILE}/study.journal"],
     f"hparams_search.storage=journal:{A_FILE}/study.journal: {A_FILE} is a file, not a folder"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.heartbeat_seconds=0.001"],
     "hparams_search.heartbeat_seconds=0.001: a number of seconds, 1 or more"),
    ("train", ["data=mnist", "data.folds=4", "data.fold=4"], "data.fold=4: a fold from 0 to 3 (data.folds=4)"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.storage=bogus://x"],
     "hparams_search.storage=bogus://x: null or a database URL (SQLAlchemy knows no database 'bogus'"),
    ("train", ["-m", "hparams_search=lenet_fashion", f"hparams_search.storage=postgresql://{CLOSED}/study"],
     f"hparams_search.storage=postgresql://{CLOSED}/study: the database server does not answer"),
    ("train", ["-m", "hparams_search=lenet_fashion", "hparams_search.storage=mysql://u@db/study"],
     "hparams_search.storage=mysql://u@db/study: null or a database URL (the driver for mysql is not installed (No module "
     "named 'MySQLdb'): install it, or name one that is in the URL (mysql+<driver>://...))"),
    ("train", ["logger=mlflow", "+logger.mlflow.foo=1"],
     "logger.mlflow.foo=1: lightning.pytorch.loggers.MLFlowLogger does not take it (MLFlowLogger.__init__() got an "
     "unexpected keyword argument 'foo'); remove it"),
    ("train", ["optimzer.lr=0.1"], "optimzer.lr=0.1: no key 'optimzer' in the config; did you mean optimizer.lr?"),
    ("train", ["+optimizer.lr=1"], "+optimizer.lr=1: optimizer.lr is in the config already: set it without the +, e.g. "
     "optimizer.lr=1"),
    ("train", ["~model.freeze"], "~model.freeze: model.freeze cannot be removed (every key of model is used)"),
    ("train", ["~model"], "model is required: choose one of cifar_net, cifar_net_v3, convnet, fast_net, lenet, mlp, timm, "
     "torchvision, vgg16, e.g. model=cifar_net"),
    ("eval", [f"ckpt_path={CHECKPOINT}", "~model"], "~model: eval.py has no model to remove: leave it out"),
    ("export", [f"ckpt_path={CHECKPOINT}", "+foo.bar=1"], "foo={bar:1}: no such key; the keys here are paths, ckpt_path, format, output"),
    ("train", ["optimizer.lr.x=1"], "optimizer.lr.x=1: optimizer.lr is a value, not a section with keys: set it, e.g. "
     "optimizer.lr=VALUE"),
    ("train", ["logger=mlflow", "logger.mlflow.tracking_uri=mysql://u@db/mlflow"],
     "logger.mlflow.tracking_uri=mysql://u@db/mlflow: the driver for mysql is not installed (No module named 'MySQLdb')"),
    ("train", ["logger=mlflow", f"logger.mlflow.tracking_uri=postgresql+psycopg://{CLOSED}/mlflow"],
     f"logger.mlflow.tracking_uri=postgresql+psycopg://{CLOSED}/mlflow: the database server does not answer ({CLOSED} does"),
    # Kind 4: settings a library refuses only later, declared
    ("train", ["callbacks.checkpoint.monitor=val/accuracy"],
     "callbacks.checkpoint.monitor=val/accuracy: not a metric the model logs; did you mean val/acc?"),
    ("train", ["callbacks.checkpoint.mode=maximum"], "callbacks.checkpoint.mode=maximum: min or max"),
    ("train", ["callbacks.checkpoint.mode=min"], "callbacks.checkpoint.mode=min: max for monitor=val/acc"),
    ("train", ["callbacks.checkpoint.monitor=test/acc"],
     "callbacks.checkpoint.monitor=test/acc: test metrics are logged during training only with data.test_every_epoch=true"),
    ("train", [*SHORT_MNIST, "+trainer.val_check_interval=1000"],
     "trainer.val_check_interval=1000: an epoch has 6 training batches here"),
    ("train", ["data=mnist", "data.augment.translate=100"],
     "data.augment.translate=100: less than the image's side: at most 27 pixels for 28×28 images"),
    ("train", ["data=mnist", "data.augment.crop_padding=[2,30]"],
     "data.augment.crop_padding=[2,30]: less than the image's side"),
    ("train", ["data.augment.cutmix_alpha=inf"], "data.augment.cutmix_alpha=inf: a number, 0 (off) or more (a finite number"),
    ("train", ["scheduler.warmup_epochs=inf"], "scheduler.warmup_epochs=inf: a number of epochs, 0 or more"),
    ("train", ["optimizer.lr=inf"], "optimizer.lr=inf: a positive number (a finite number: not inf or nan)"),
    ("train", ["optimizer.lr=nan"], "optimizer.lr=nan: a positive number (a finite number: not inf or nan)"),
    ("train", ["scheduler=onecycle", "scheduler.total_steps=1"],
     "scheduler.total_steps=1: auto (every batch of the run) or a number of steps, 2 or more"),
    ("train", [*SHORT_MNIST, "trainer.max_epochs=2", "scheduler=onecycle", "scheduler.total_steps=5"],
     "scheduler.total_steps=5: this run takes 12 optimizer steps and one-cycle stops it at 6"),
    ("train", ["data.image_size=100000"], "data.image_size=100000: at most 4096 pixels a side"),
    ("train", ["data.image_size=[28,5000]"], "data.image_size=[28,5000]: at most 4096 pixels a side"),
    ("train", ["data.augment.erasing=true"], "data.augment.erasing=true: a probability from 0 to 1 (not true or false)"),
    ("train", ["trainer.deterministic=maybe"], "trainer.deterministic=maybe: true, false or warn"),
    ("train", ["slurm.requeue_signal=TERM"], "slurm.requeue_signal=TERM: USR1 or USR2 (what sbatch --signal sends)"),
    ("train", ["slurm.auto_requeue=maybe"], "slurm.auto_requeue=maybe: true or false"),
    # Kind 5: messages that say what was typed
    ("train", ["optimizer.lr='0.1'"], TEXT.format("optimizer.lr='0.1': '0.1'") + "write optimizer.lr=0.1 without quotes"),
    ("train", ["optimizer.lr='-1'"], "optimizer.lr='-1': '-1' is text, and -1 unquoted is not allowed either: a positive number"),
    ("train", ["model.compile='true'"], TEXT.format("model.compile='true': 'true'") + "write model.compile=true without quotes"),
    ("train", ["paths.data_dir=${oc.env:TINYVISION_NO_SUCH_VARIABLE}"],
     "paths.data_dir=${oc.env:TINYVISION_NO_SUCH_VARIABLE}: the environment variable TINYVISION_NO_SUCH_VARIABLE is not set"),
    ("eval", ["ckpt_path=${oc.env:TINYVISION_UNSET_PATH}"],
     "ckpt_path=${oc.env:TINYVISION_UNSET_PATH}: the environment variable TINYVISION_UNSET_PATH is not set"),
    ("train", ["data=folder", f"data.root={ONE_CLASS}"],
     f"data.root={ONE_CLASS} has one class folder (ants): a classifier needs at least two class folders"),
    # Kind 6: predict.py when none of its inputs can be read
    ("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={TEXT_IMAGE}"], f"inputs={TEXT_IMAGE}: it is a text file, not an image"),
    ("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={EMPTY_IMAGE}"], f"inputs={EMPTY_IMAGE}: it is empty (0 bytes)"),
    ("predict", [f"ckpt_path={CHECKPOINT}", "inputs=/nonexistent/photos"], "inputs=/nonexistent/photos does not exist"),
    ("predict", [f"ckpt_path={CHECKPOINT}", "inputs=/dev/null"], "inputs=/dev/null is not a regular file (a FIFO, socket or device)"),
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


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "best.ckpt")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """This machine as one without internet, whatever it has: every address check goes to a closed local port, no
    weights are cached, and a download or a retry loop that starts anyway fails the test by its name."""
    import huggingface_hub
    import mlflow.utils.rest_utils
    import timm.models._builder
    import torch
    import torchvision.models._api

    from tinyvision import boundaries

    host, port = CLOSED.split(":")
    monkeypatch.setattr(boundaries, "_route", lambda *_: (host, int(port)))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # W&B offline, as logger=wandb is by default
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)

    def entered(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} was called: a download (and its retries) started")
        return fail

    for module, name in ((torchvision.models._api, "load_state_dict_from_url"), (timm.models._builder, "load_state_dict_from_url"),
                         (timm.models._builder, "load_state_dict_from_hf"), (huggingface_hub, "hf_hub_download"),
                         (mlflow.utils.rest_utils, "http_request")):
        monkeypatch.setattr(module, name, entered(f"{module.__name__}.{name}"))


def placeholders(tmp_path: Path, data_root: Path, checkpoint: Path) -> dict[str, str]:
    """The files and folders the words of CASES stand for."""
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "a_file").write_text("a file where a folder is expected")
    (tmp_path / "notes.png").write_text("a text file named like an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "model.onnx.json").write_text('{"format": "onnx", "class_names": ["a", "b"]}')
    one_class = tmp_path / "one_class"
    (one_class / "ants").mkdir(parents=True)
    for image in list((data_root / "ants_bees" / "ants").iterdir())[:3]:
        (one_class / "ants" / image.name).write_bytes(image.read_bytes())
    return {NOT_A_CHECKPOINT: str(tmp_path / "notes.ckpt"), EMPTY_FILE: str(tmp_path / "empty.ckpt"),
            A_FILE: str(tmp_path / "a_file"), CHECKPOINT: str(checkpoint), ONE_CLASS: str(one_class),
            TWO_CLASSES: str(data_root / "ants_bees"), TEXT_IMAGE: str(tmp_path / "notes.png"),
            EMPTY_IMAGE: str(tmp_path / "empty.png"), A_CARD: str(tmp_path / "model.onnx.json")}


def filled(text: str, paths: dict[str, str]) -> str:
    for word in sorted(paths, key=len, reverse=True):  # longest first: no word is cut by a shorter one
        text = text.replace(word, paths[word])
    return text


@pytest.mark.parametrize(("script", "argv", "expected"), CASES, ids=[" ".join([s, *a]) or s for s, a, _ in CASES])
def test_bad_input_gets_one_line_and_exit_status_2(script, argv, expected, data_root, checkpoint, tmp_path, monkeypatch,
                                                     capsys):
    run_dir = tmp_path / "run"
    paths = placeholders(tmp_path, data_root, checkpoint)
    argv, expected = [filled(a, paths) for a in argv], filled(expected, paths)
    extra = [f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    if script == "train":
        extra += [f"{key}={value}" for key, value in (("logger", "tensorboard"), ("paths.data_dir", data_root))
                  if not any(a.startswith(f"{key}=") for a in argv)]
    status, stderr = run_in_process(script, [*argv, *extra], monkeypatch, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), stderr[-3000:]
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr
    # a refused command writes nothing anywhere: the run or sweep folder it made is gone, not merely empty
    assert not run_dir.exists() and not (tmp_path / "sweep").exists(), sorted(map(str, tmp_path.rglob("*")))[:20]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: trainer=gpu is not refused here")
def test_a_gpu_trainer_without_a_gpu_names_the_setting_and_the_way_out(data_root, tmp_path, monkeypatch, capsys):
    status, stderr = run_in_process("train", ["trainer=gpu", f"paths.data_dir={data_root}", f"hydra.run.dir={tmp_path / 'run'}"],
                                    monkeypatch, capsys)
    assert status == 2
    assert stderr.strip().splitlines() == [
        "error: trainer.accelerator=gpu: no GPU is available here (PyTorch finds no CUDA device): train on the CPU with "
        "trainer=cpu, or let Lightning choose with trainer.accelerator=auto, e.g. trainer.accelerator=cpu"]


def test_a_run_refused_by_its_data_prints_no_device_census_before_its_line(data_root, tmp_path):
    """Lightning's "GPU available: ... / TPU available: ..." lines come when the Trainer is made, before the data is
    read: tinyvision.noise drops them, so a run refused by its data still answers with one line."""
    result = subprocess.run([sys.executable, "train.py", "data=mnist", "data.val_size=500", f"paths.data_dir={data_root}",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: data.val_size=500 does not fit the training split of mnist (400 images): use a count from 1 to 399 or a "
        "fraction between 0 and 1 such as 0.1"]


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

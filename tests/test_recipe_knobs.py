"""Recipe knobs: label smoothing and class weights do what the formulas say; Trainer knobs need no +."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tinyvision.module import ImageClassifier
from tinyvision.training import train

GREY = {"channels": 1, "image_size": 28, "num_classes": 10, "mean": [0.2860], "std": [0.3530], "dataset": "fashion"}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}


def training_loss(classifier: ImageClassifier, images, labels) -> torch.Tensor:
    classifier.train()
    return classifier._step((images, labels), "train")[0]


def test_label_smoothing_changes_the_loss_by_the_known_formula():
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (16,))
    plain = ImageClassifier(model={"_target_": "tinyvision.models.LeNet"}, data=dict(GREY), optimizer=SGD)
    smoothed = ImageClassifier(model={"_target_": "tinyvision.models.LeNet"}, data=dict(GREY), optimizer=SGD,
                               loss={"label_smoothing": 0.2})
    smoothed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        log_p = F.log_softmax(plain.net(plain.normalize(images)), dim=1)
    nll, uniform = -log_p.gather(1, labels[:, None]).mean(), -log_p.mean()
    assert training_loss(plain, images, labels).item() == pytest.approx(nll.item(), rel=1e-5)
    # (1 - ε) × NLL + ε × the mean over classes of -log p
    assert training_loss(smoothed, images, labels).item() == pytest.approx((0.8 * nll + 0.2 * uniform).item(), rel=1e-5)


def test_auto_class_weights_are_the_inverse_class_frequency_of_the_training_split(make_config, tmp_path):
    import lightning as L

    from tinyvision.config import validate_train
    from tinyvision.training import build

    datamodule, classifier = build(validate_train(make_config("loss.class_weights=auto", "data.val_size=50", run_dir=tmp_path / "run")))
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(classifier, datamodule)
    counts = torch.bincount(datamodule.splits["train"][1], minlength=10).float()
    assert counts.sum() == 350 and (counts > 0).all()
    assert torch.allclose(classifier.class_weights, 350 / (10 * counts))  # N / (C × n_c)


def test_class_weights_weigh_the_loss():
    torch.manual_seed(1)
    images, labels = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (12,))
    weights = [float(i + 1) for i in range(10)]
    weighted = ImageClassifier(model={"_target_": "tinyvision.models.LeNet"}, data=dict(GREY), optimizer=SGD,
                               loss={"class_weights": weights})
    with torch.no_grad():
        log_p = F.log_softmax(weighted.net(weighted.normalize(images)), dim=1)
    w = torch.tensor(weights)[labels]
    expected = (w * -log_p.gather(1, labels[:, None]).flatten()).sum() / w.sum()
    assert training_loss(weighted, images, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_trainer_knobs_are_set_without_a_plus(make_config, tmp_path):
    metrics = train(make_config("data.val_size=50", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                                "trainer.limit_test_batches=1", "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2",
                                "trainer.max_epochs=1", run_dir=tmp_path / "run"))
    assert metrics["history"][0]["train_samples"] == 2 * 64  # two batches of the default 64


@pytest.mark.parametrize("scheduler", ["none", "step"])
def test_warmup_raises_the_lr_linearly_every_batch_then_hands_over(scheduler, make_config, tmp_path):
    import lightning as L

    from tinyvision.config import validate_train
    from tinyvision.training import build

    class Rates(L.Callback):
        def __init__(self):
            self.rates = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    cfg = make_config("optimizer=sgd", "optimizer.lr=0.5", f"scheduler={scheduler}", "scheduler.warmup_epochs=1",
                      *(["scheduler.step_size=1", "scheduler.gamma=0.5"] if scheduler == "step" else []),
                      "data.val_size=50", "data.batch_size=32", run_dir=tmp_path / "run")
    datamodule, classifier = build(validate_train(cfg))
    rates = Rates()
    L.Trainer(max_epochs=2, limit_train_batches=10, limit_val_batches=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[rates]).fit(classifier, datamodule)
    expected_warmup = [0.5 * (0.01 + 0.99 * k / 10) for k in range(10)]
    assert rates.rates[:10] == pytest.approx(expected_warmup)  # epoch 1: from a hundredth up, batch by batch
    after = 0.5 if scheduler == "none" else 0.25  # epoch 2: the full lr, times StepLR's first decay
    assert rates.rates[10:] == pytest.approx([after] * 10)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one_and_repeat_for_the_same_batch(mixup, cutmix):
    from tinyvision.data.augment import mix_batch

    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    mixed, soft = mix_batch(images, labels, 10, mixup, cutmix, (42, 0, 7))
    assert mixed.dtype == torch.uint8 and soft.shape == (16, 10)
    assert torch.allclose(soft.sum(1), torch.ones(16))
    assert (soft.gather(1, labels[:, None]) >= 0).all() and not torch.equal(mixed, images)
    again, soft_again = mix_batch(images, labels, 10, mixup, cutmix, (42, 0, 7))
    assert torch.equal(again, mixed) and torch.equal(soft_again, soft)  # the same batch number: the same mix
    other, _ = mix_batch(images, labels, 10, mixup, cutmix, (42, 0, 8))
    assert not torch.equal(other, mixed)


def test_a_mixed_run_trains_with_soft_targets(make_config, tmp_path):
    # ConvNet: LeNet's sigmoid layers stay at chance for one epoch of six batches; ConvNet learns the easy fixture
    # classes through all this mixing (measured test/acc 0.92 after one epoch), so 0.5 (chance: 0.1) has a margin.
    metrics = train(make_config("model=convnet", "data.augment.mixup_alpha=0.2", "data.augment.cutmix_alpha=1.0",
                                "loss.label_smoothing=0.1", "data.augment.trivial_augment=true", "data.augment.erasing=0.25",
                                "data.augment.color_jitter=0.3", "data.val_size=50", "trainer.max_epochs=1", run_dir=tmp_path / "run"))
    assert metrics["test/acc"] > 0.5


def test_ema_weights_differ_from_the_raw_ones_and_are_what_the_best_checkpoint_and_test_use(make_config, tmp_path):
    import json

    from tinyvision.inference import load_classifier

    run_dir = tmp_path / "run"
    metrics = train(make_config("callbacks.ema.decay=0.9", "data.val_size=50", "trainer.max_epochs=2", "optimizer.lr=0.01",
                                run_dir=run_dir))
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not torch.equal(averaged["net.classifier.0.weight"], raw["net.classifier.0.weight"])
    classifier = load_classifier(metrics["best_checkpoint"])  # what eval, predict and export load
    assert torch.equal(classifier.state_dict()["net.classifier.0.weight"], averaged["net.classifier.0.weight"])
    # the final test ran on the averaged weights: the same figure as a fresh test of that checkpoint
    from tinyvision.inference import datamodule_for

    datamodule = datamodule_for(classifier, None, str(make_config().paths.data_dir))
    datamodule.setup("test")
    correct = total = 0
    with torch.inference_mode():
        for images, labels in datamodule.test_dataloader():
            correct += int((classifier(images).argmax(1) == labels).sum())
            total += len(labels)
    assert correct / total == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["test/acc"])


def test_tta_averages_the_views_probabilities():
    from tinyvision.tta import probabilities, shifted, views

    torch.manual_seed(2)
    model = ImageClassifier(model={"_target_": "tinyvision.models.LeNet"}, data=dict(GREY), optimizer=SGD).eval()
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.inference_mode():
        expected = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
        assert torch.allclose(probabilities(model, images, "flip"), expected, atol=1e-6)
        assert len(views(images, "flip_translate")) == 6
    moved = shifted(images, 1, 1)
    assert torch.equal(moved[..., 1:, 1:], images[..., :-1, :-1]) and moved.dtype == torch.uint8
    assert torch.equal(moved[..., 0, 1:], images[..., 1, :-1])  # the new top row reflects the old second row


def test_the_final_test_can_use_tta(make_config, tmp_path):
    from tinyvision.inference import datamodule_for, load_classifier
    from tinyvision.tta import probabilities

    metrics = train(make_config("tta=flip", "data.val_size=50", "trainer.max_epochs=1", run_dir=tmp_path / "run"))
    classifier = load_classifier(metrics["best_checkpoint"])
    datamodule = datamodule_for(classifier, None, str(make_config().paths.data_dir))
    datamodule.setup("test")
    correct = total = 0
    with torch.inference_mode():
        for images, labels in datamodule.test_dataloader():
            correct += int((probabilities(classifier, images, "flip").argmax(1) == labels).sum())
            total += len(labels)
    assert metrics["test/acc"] == pytest.approx(correct / total)


@pytest.mark.parametrize("augment", ["erasing", "translate", "color_jitter"])
def test_augmentations_draw_per_image_and_repeat_for_the_same_generator_seed(augment):
    from tinyvision.data.augment import color_jitter, random_erasing, random_translate

    apply = {"erasing": lambda x, g: random_erasing(x, 1.0, g), "translate": lambda x, g: random_translate(x, 3, g),
             "color_jitter": lambda x, g: color_jitter(x, 0.5, g)}[augment]
    base = torch.randint(30, 220, (1, 3, 32, 32), dtype=torch.uint8)
    images = base.expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    first = apply(images, torch.Generator().manual_seed(5))
    again = apply(images, torch.Generator().manual_seed(5))
    other = apply(images, torch.Generator().manual_seed(6))
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, again) and not torch.equal(first, other)  # the same (seed, epoch, rank): the same draws
    assert len({tuple(image.flatten().tolist()) for image in first}) > 1  # each copy got its own parameters


def test_erasing_zeroes_one_rectangle_per_image():
    from tinyvision.data.augment import random_erasing

    images = torch.full((16, 1, 28, 28), 200, dtype=torch.uint8)
    erased = random_erasing(images, 1.0, torch.Generator().manual_seed(0))
    for image in erased[:, 0]:
        rows, cols = (image == 0).nonzero(as_tuple=True)
        assert len(rows) > 0 and len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(random_erasing(images, 0.0, torch.Generator().manual_seed(0)), images)


def test_every_recipe_knob_is_reachable_from_an_optuna_search_space(make_config):
    import optuna

    from tinyvision.config import validate_train
    from tinyvision.search.space import search_space, trial_overrides

    space = search_space({
        "loss.label_smoothing": "interval(0.0, 0.3)", "loss.class_weights": "choice(auto)",
        "data.augment.translate": "int(interval(0, 4))", "data.augment.erasing": "interval(0.0, 0.5)",
        "data.augment.color_jitter": "interval(0.0, 0.4)", "data.augment.mixup_alpha": "interval(0.0, 0.4)",
        "data.augment.cutmix_alpha": "interval(0.0, 1.0)", "callbacks.ema.decay": "choice(0.0, 0.99, 0.999)",
        "scheduler.warmup_epochs": "interval(0.0, 2.0)", "tta": "choice(none, flip, flip_translate)",
        "trainer.gradient_clip_val": "choice(0.5, 1.0)", "optimizer.backbone_lr_scale": "interval(0.05, 1.0)",
        "model.freeze": "choice(backbone)",
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask(space)
        cfg = make_config(*trial_overrides(trial.params))  # composes: every key exists without a +
        validate_train(cfg)  # and every drawn value is allowed


def test_trivial_augment_picks_an_operation_per_image_and_repeats_for_the_same_seed():
    from tinyvision.data.augment import TRIVIAL_OPS, trivial_augment

    base = torch.randint(30, 220, (1, 3, 32, 32), dtype=torch.uint8)
    images = base.expand(64, -1, -1, -1).contiguous()
    first = trivial_augment(images, torch.Generator().manual_seed(3))
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, trivial_augment(images, torch.Generator().manual_seed(3)))
    distinct = {tuple(image.flatten().tolist()) for image in first}
    assert len(distinct) > len(TRIVIAL_OPS) // 2  # many different results from one image
    op = torch.randint(0, len(TRIVIAL_OPS), (64,), generator=torch.Generator().manual_seed(3))
    untouched = op == TRIVIAL_OPS.index("identity")
    assert untouched.any() and torch.equal(first[untouched], images[untouched])  # identity leaves the image as it was


def test_the_fast_recipe_composes_and_trains(make_config, tmp_path):
    cfg = make_config("experiment=fashion_fast", "data.val_size=50", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                      run_dir=tmp_path / "run")
    assert cfg.model._target_ == "tinyvision.models.FastNet" and cfg.tta == "flip" and cfg.callbacks.ema.decay == 0.98
    metrics = train(cfg)
    assert metrics["epochs"] == 1


def test_the_cifar10_fast_recipe_trains_end_to_end_on_the_fixtures(make_config, tmp_path):
    cfg = make_config("experiment=cifar10_fast", "data.val_size=50", "data.batch_size=64", "trainer.max_epochs=2",
                      run_dir=tmp_path / "run")
    assert cfg.scheduler.anneal_strategy == "linear" and cfg.loss.label_smoothing == 0.2 and cfg.tta == "flip_translate"
    metrics = train(cfg)
    # Eight steps of a recipe made for batch 1024: measured test/acc 0.29 (best val 0.36; chance 0.1) with BatchNorm
    # momentum 0.6 and the EMA's warm-up; before those the EMA weights stayed at chance. 0.2 leaves a margin.
    assert metrics["epochs"] == 2 and metrics["test/acc"] > 0.2


def test_grayscale_gives_the_chosen_images_their_luma_in_every_channel_and_leaves_the_rest():
    """Per image: drawn grey, all three channels hold torchvision's grey of it (rgb_to_grayscale); not drawn, unchanged."""
    from torchvision.transforms.v2 import functional as TF

    from tinyvision.data.augment import random_grayscale

    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_grayscale(images, 0.5, torch.Generator().manual_seed(2))
    grey = torch.rand(64, generator=torch.Generator().manual_seed(2)) < 0.5  # the draw the function makes
    assert 10 < int(grey.sum()) < 54  # both kinds occur
    expected = TF.rgb_to_grayscale(images[grey].float() / 255).mul(255).round().to(torch.uint8)
    assert (out[grey].int() - expected.expand(-1, 3, -1, -1).int()).abs().max() <= 1  # rounding: at most one level
    assert torch.equal(out[~grey], images[~grey])
    assert torch.equal(random_grayscale(images[:, :1], 1.0), images[:, :1])  # grey images: nothing to do


"""What each training knob does, observed in real runs: the batches a step receives, the update the optimizer
applies, the optimizer steps taken, the probabilities TTA gives and the exported model's outputs after training.
Each test fails if its knob stops working, not only if the run stops finishing."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from tinyvision.config import validate_train
from tinyvision.data.augment import (
    color_jitter,
    mix_batch,
    random_crop,
    random_erasing,
    random_grayscale,
    random_horizontal_flip,
    random_translate,
    trivial_augment,
)
from tinyvision.module import ImageClassifier
from tinyvision.trainer import make_trainer
from tinyvision.training import build

# A small run on one CPU process: a couple of batches of 16, one validation and one test batch, nothing written.
QUICK = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false",
         "+trainer.enable_model_summary=false", "+trainer.num_sanity_val_steps=0", "logger=none", "data.batch_size=16",
         "data.val_size=50"]
# CIFAR-10's config turns on crop and flip: off here, so each test sees its own knob alone (colour, so that
# colour jitter's saturation is exercised too).
CIFAR = ["data=cifar10", "data.augment.crop_padding=null", "data.augment.horizontal_flip=0.0"]


class Seen:
    """Records what the steps of a run receive, and each training batch as the loader gave it (before the data
    module's on_after_batch_transfer, with the augmentation generator's state at that moment)."""

    def __init__(self, datamodule, classifier):
        self.steps: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": [], "test": []}
        self.raw: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        hook = datamodule.on_after_batch_transfer

        def on_after_batch_transfer(batch, dataloader_idx):
            if datamodule.trainer is not None and datamodule.trainer.training:
                generator = datamodule._augment_generator()
                self.raw.append((batch[0].clone(), batch[1].clone(), generator.get_state() if generator is not None else None))
            return hook(batch, dataloader_idx)

        datamodule.on_after_batch_transfer = on_after_batch_transfer
        steps = {stage: getattr(classifier, f"{name}_step") for stage, name in (("train", "training"), ("val", "validation"),
                                                                                ("test", "test"))}

        def training_step(batch, batch_idx):
            self.steps["train"].append((batch[0].clone(), batch[1].clone()))
            return steps["train"](batch, batch_idx)

        def validation_step(batch, batch_idx, dataloader_idx=0):
            self.steps["val"].append((batch[0].clone(), batch[1].clone()))
            return steps["val"](batch, batch_idx, dataloader_idx)

        def test_step(batch, batch_idx):
            self.steps["test"].append((batch[0].clone(), batch[1].clone()))
            return steps["test"](batch, batch_idx)

        classifier.training_step, classifier.validation_step, classifier.test_step = training_step, validation_step, test_step


def quick_run(make_config, *overrides: str, callbacks=(), test: bool = False):
    """Build the data module and classifier from the config, fit them with the config's Trainer, as train.py does."""
    values = validate_train(make_config(*QUICK, *overrides))  # resolved and checked once, as train() does
    L.seed_everything(values.seed, verbose=False)
    datamodule, classifier = build(values)
    seen = Seen(datamodule, classifier)
    trainer = make_trainer(values, list(callbacks), [])
    trainer.fit(classifier, datamodule=datamodule)
    if test:
        trainer.test(classifier, datamodule=datamodule, verbose=False)
    return trainer, datamodule, classifier, seen


def rows_of(images: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """For each image, the index of an identical image in ``stored`` (-1 where none is)."""
    same = (images.flatten(1)[:, None] == stored.flatten(1)[None]).all(-1)
    return torch.where(same.any(1), same.int().argmax(1), -1)


def generator_at(state: torch.Tensor) -> torch.Generator:
    generator = torch.Generator()
    generator.set_state(state)
    return generator


AUGMENTS = {
    "none": ([], None),
    "crop_padding": (["data.augment.crop_padding=4"], lambda x, g: random_crop(x, 4, g)),
    "translate": (["data.augment.translate=2"], lambda x, g: random_translate(x, 2, g)),
    "horizontal_flip": (["data.augment.horizontal_flip=0.5"], lambda x, g: random_horizontal_flip(x, 0.5, g)),
    "color_jitter": (["data.augment.color_jitter=0.4"], lambda x, g: color_jitter(x, 0.4, g)),
    "erasing": (["data.augment.erasing=0.5"], lambda x, g: random_erasing(x, 0.5, g)),
    "grayscale": (["data.augment.grayscale=0.5"], lambda x, g: random_grayscale(x, 0.5, g)),
    "trivial_augment": (["data.augment.trivial_augment=true"], lambda x, g: trivial_augment(x, g)),
}


@pytest.mark.parametrize("knob", list(AUGMENTS))
def test_the_training_step_receives_the_augmentation_of_the_raw_batch_and_evaluation_gets_the_stored_images(knob, make_config):
    """Each training step's images are the knob's function applied to the loader's batch from the generator state the
    data module had; the generator carries on from batch to batch; validation and test steps get the stored images."""
    overrides, augment = AUGMENTS[knob]
    _, datamodule, _, seen = quick_run(make_config, *CIFAR, *overrides, "model=mlp", test=True)
    assert len(seen.raw) == len(seen.steps["train"]) == 2
    stored_images, stored_labels = datamodule.splits["train"]
    for k, ((raw, labels, state), (images, step_labels)) in enumerate(zip(seen.raw, seen.steps["train"])):
        found = rows_of(raw, stored_images)
        assert (found >= 0).all() and torch.equal(stored_labels[found], labels)  # the loader's batch: stored training images
        assert torch.equal(step_labels, labels)
        if augment is None:
            assert torch.equal(images, raw)  # every knob off: the step trains on the images as stored
            continue
        generator = generator_at(state)
        expected = augment(raw, generator)
        assert not torch.equal(expected, raw)  # the knob changes these images (so the comparison below can fail)
        assert torch.equal(images, expected), f"batch {k}: the step did not receive {knob}'s output"
        if k + 1 < len(seen.raw):
            # the next batch draws on from where this one stopped: fresh parameters for every batch
            assert torch.equal(generator.get_state(), seen.raw[k + 1][2])
    for stage in ("val", "test"):
        images, labels = seen.steps[stage][0]
        assert torch.equal(images, datamodule.splits[stage][0][: len(images)]), f"{stage} images were changed"
        assert torch.equal(labels, datamodule.splits[stage][1][: len(labels)])


@pytest.mark.parametrize("knob", ["mixup_alpha", "cutmix_alpha"])
def test_mixup_and_cutmix_hand_the_step_images_and_soft_targets_that_carry_one_drawn_lambda(knob, make_config):
    """A training step's soft targets are λ·onehot(y) + (1-λ)·onehot(y of a partner image) with one λ per batch; MixUp's
    images are λ·x + (1-λ)·x_partner (to the uint8 rounding); CutMix's are the partner's inside one box whose area
    share is 1-λ. The batch's mix is mix_batch's for the key (seed, rank, batch number in the run)."""
    _, datamodule, _, seen = quick_run(make_config, *CIFAR, f"data.augment.{knob}=1.0", "model=mlp")
    lambdas = []
    for k, ((raw, labels, _), (images, soft)) in enumerate(zip(seen.raw, seen.steps["train"])):
        assert soft.shape == (len(labels), 10) and torch.allclose(soft.sum(1), torch.ones(len(labels)))
        # λ from the targets: a row mixing two classes gives its own class λ
        two_classes = (soft > 0).sum(1) == 2
        assert two_classes.any()
        lam = soft[two_classes].gather(1, labels[two_classes, None]).flatten()
        assert torch.allclose(lam, lam[0].expand_as(lam)), "one λ for the whole batch"
        lam = float(lam[0])
        assert 0.0 < lam < 1.0
        lambdas.append(lam)
        one_hot = F.one_hot(labels, 10).float()
        if knob == "mixup_alpha":
            # the partner of image i: the j whose blend with it (rounded) is what the step received
            blends = (lam * raw.float()[:, None] + (1 - lam) * raw.float()[None]).round()  # N×N×C×H×W: i with j
            matches = ((blends - images.float()[:, None]).abs() <= 1).flatten(2).all(-1)  # ≤1: float order of the rounding
        else:
            changed = (images != raw).any(1).any(0)  # H×W: the pixels that came from another image
            rows, cols = changed.nonzero(as_tuple=True)
            top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
            assert changed[top:bottom, left:right].all() and changed.sum() == (bottom - top) * (right - left)  # one rectangle
            assert (bottom - top) * (right - left) / changed.numel() == pytest.approx(1 - lam)  # its area share is 1-λ
            outside = torch.ones_like(changed)
            outside[top:bottom, left:right] = False
            assert torch.equal(images[..., outside], raw[..., outside])  # the rest of each image is its own
            pasted, sources = images[..., top:bottom, left:right], raw[..., top:bottom, left:right]
            matches = (pasted[:, None] == sources[None]).flatten(2).all(-1)  # N×N: image i's box is image j's
        assert matches.any(1).all(), "every image is mixed with an image of the same batch"
        partner = matches.int().argmax(1)
        assert sorted(partner.tolist()) == list(range(len(labels)))  # the partners are the batch in a shuffled order
        assert torch.allclose(soft, lam * one_hot + (1 - lam) * one_hot[partner])
        # and it is mix_batch's draw for this batch's key
        mixup, cutmix = (1.0, 0.0) if knob == "mixup_alpha" else (0.0, 1.0)
        again_images, again_soft = mix_batch(raw, labels, 10, mixup, cutmix, (datamodule.seed, 0, k))
        assert torch.equal(again_images, images) and torch.equal(again_soft, soft)
    assert len(lambdas) == 2 and lambdas[0] != lambdas[1]  # λ is drawn for each batch
    for stage_images, _ in seen.steps["val"]:
        assert torch.equal(stage_images, datamodule.splits["val"][0][: len(stage_images)])  # validation is not mixed


class Updates(L.Callback):
    """The gradients as backward left them (before any clipping), the gradients after the optimizer step, and the
    change each training batch made to the weights."""

    def __init__(self):
        self.raw_gradients, self.step_gradients, self.changes, self.steps = [], [], [], 0

    @staticmethod
    def flat(tensors) -> torch.Tensor:
        return torch.cat([t.detach().flatten().clone() for t in tensors])

    def on_fit_start(self, trainer, pl_module):
        self.initial = {key: value.clone() for key, value in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = self.flat(pl_module.parameters())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # Lightning calls this before it clips (configure_gradient_clipping runs after it, then optimizer.step)
        self.raw_gradients.append(self.flat(p.grad for p in pl_module.parameters()))
        self.steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changes.append(self.flat(pl_module.parameters()) - self.before)
        if all(p.grad is not None for p in pl_module.parameters()):
            self.step_gradients.append(self.flat(p.grad for p in pl_module.parameters()))


SGD = ["optimizer=sgd", "optimizer.lr=0.1", "model=mlp"]  # plain SGD: a step changes the weights by -lr × gradient


CLIP = 0.02  # the MLP's first gradients have a norm near 0.3 on the fixtures: clipping to 0.02 is far below


@pytest.mark.parametrize("clip", [None, CLIP])
def test_gradient_clip_val_caps_the_norm_of_the_gradient_the_optimizer_applies(clip, make_config):
    """With trainer.gradient_clip_val the optimizer steps with the gradient scaled to that norm (the weights move by
    lr × clip, in the gradient's direction); without it, with the whole gradient, whose norm is well above it."""
    updates = Updates()
    quick_run(make_config, *SGD, f"trainer.gradient_clip_val={'null' if clip is None else clip}", callbacks=[updates])
    assert updates.steps == 2
    for raw, applied, change in zip(updates.raw_gradients, updates.step_gradients, updates.changes):
        assert raw.norm() > 5 * CLIP  # the gradient is far above the clip value: clipping has work to do
        assert torch.allclose(change, -0.1 * applied, atol=1e-7)  # the step used exactly the gradient seen after it
        if clip is None:
            assert torch.allclose(applied, raw)
        else:
            assert applied.norm().item() == pytest.approx(clip, rel=1e-4)
            assert torch.allclose(applied, raw * clip / (raw.norm() + 1e-6), atol=1e-7)  # scaled, not cut per element


def test_accumulate_grad_batches_steps_once_every_two_batches_with_their_mean_gradient(make_config):
    """With trainer.accumulate_grad_batches=2, four batches give two optimizer steps; the weights stay put after the
    first batch of each pair and then move by -lr × the mean of the pair's two gradients."""
    updates = Updates()
    trainer, _, classifier, seen = quick_run(make_config, *SGD, "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4",
                                             callbacks=[updates])
    assert len(seen.steps["train"]) == 4 and updates.steps == 2 and trainer.global_step == 2
    assert not updates.changes[0].any() and not updates.changes[2].any()  # no step after the 1st and 3rd batches
    # the first step, recomputed by hand: both batches' gradients at the initial weights
    initial = ImageClassifier(**classifier.hparams)
    initial.load_state_dict(updates.initial)
    gradients = []
    for images, labels in seen.steps["train"][:2]:
        initial.zero_grad()
        F.cross_entropy(initial(images), labels).backward()
        gradients.append(Updates.flat(p.grad for p in initial.parameters()))
    assert torch.allclose(updates.changes[1], -0.1 * (gradients[0] + gradients[1]) / 2, atol=1e-6)


@pytest.mark.parametrize("mode", ["flip", "flip_translate"])
def test_tta_changes_the_probabilities_and_gives_an_image_and_its_mirror_the_same(mode):
    """On a model that is not left-right symmetric, the final test's TTA changes the probabilities, and they are
    the same for an image and its mirror image (the views of one are the views of the other)."""
    from conftest import class_images

    torch.manual_seed(0)
    data = {"channels": 3, "image_size": 32, "num_classes": 10, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    # an MLP with PyTorch's default init: weights large enough that its outputs tell an image from its mirror
    classifier = ImageClassifier(model={"_target_": "tinyvision.models.MLP", "init_std": None}, data=data,
                                 optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}).eval()
    labels = torch.arange(4)
    images = torch.as_tensor(class_images(labels.numpy(), 32, 3, seed=3))

    def test_probabilities(tta: str, batch: torch.Tensor) -> torch.Tensor:
        classifier.test_tta = tta
        with torch.inference_mode():
            return classifier.test_step((batch, labels), 0).softmax(1)  # the test step's logits: log of TTA's mean

    plain, mirrored = test_probabilities("none", images), test_probabilities("none", images.flip(-1))
    assert (plain - mirrored).abs().max() > 1e-3  # the model alone tells an image from its mirror
    averaged = test_probabilities(mode, images)
    assert (averaged - plain).abs().max() > 1e-3  # TTA changes what the test sees
    assert torch.allclose(averaged, test_probabilities(mode, images.flip(-1)), atol=1e-6)


def test_onnx_export_of_a_trained_batchnorm_model_gives_its_outputs(make_config, tmp_path):
    """After a few training steps of cifar_net_v3 the BatchNorm running statistics have left their initial values,
    and the ONNX export still gives the classifier's logits (eval mode: running statistics, no dropout)."""
    from tinyvision.export import example_images, export
    from tinyvision.inference import OnnxClassifier

    _, datamodule, classifier, _ = quick_run(make_config, *CIFAR, "model=cifar_net_v3", "trainer.limit_train_batches=3")
    norms = [m for m in classifier.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 3 for m in norms)
    for norm in norms:  # moved from mean 0 and variance 1 (a default-statistics export would hide a mismatch)
        assert norm.running_mean.abs().max() > 1e-2 and (norm.running_var - 1).abs().max() > 1e-2
    onnx_file, _ = export(classifier, "onnx", tmp_path / "model.onnx")
    images = torch.cat([datamodule.splits["test"][0][:16], example_images(classifier, batch=4)])
    untrained_statistics = ImageClassifier(**classifier.hparams)
    untrained_statistics.load_state_dict(classifier.state_dict())
    for norm in untrained_statistics.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.reset_running_stats()
    with torch.inference_mode():
        expected = classifier.eval()(images)
        # the tolerance below tells trained statistics from default ones by a wide margin
        assert (untrained_statistics.eval()(images) - expected).abs().max() > 100 * 1e-4
    assert (OnnxClassifier(onnx_file)(images) - expected).abs().max() <= 1e-4


def test_the_logged_loss_is_the_mean_over_images_when_the_last_batch_is_short(make_config):
    """The test loss logged over 100 images in batches of 32, 32, 32 and 4 is their per-image mean cross-entropy."""
    values = validate_train(make_config(*QUICK, "model=mlp", "model.init_std=null", "data.batch_size=32",
                                        "trainer.limit_test_batches=null"))
    L.seed_everything(values.seed, verbose=False)
    datamodule, classifier = build(values)
    logged = make_trainer(values, [], []).test(classifier, datamodule=datamodule, verbose=False)[0]
    images, labels = datamodule.splits["test"]
    assert len(labels) % 32 == 4
    with torch.inference_mode():
        logits = classifier.eval()(images)
        batch_means = [F.cross_entropy(classifier(x), y).item() for x, y in zip(images.split(32), labels.split(32))]
    assert max(batch_means) - min(batch_means) > 0.01  # the short batch's mean differs: the weighting shows
    assert logged["test/acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
    assert logged["test/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)

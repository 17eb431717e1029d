"""What the callbacks that read the run give back, observed against an independent computation."""

from __future__ import annotations

import types

import torch

from tinyvision.callbacks import ProgressBar, StopOnNonFiniteLoss, TensorBoardPictures


def test_the_misclassified_pictures_are_the_first_wrong_validation_images_in_order():
    """Kept on the device batch by batch, the grid still shows the first N wrong images of the whole validation, in
    the order validation met them, with their predicted and true labels."""
    generator = torch.Generator().manual_seed(0)
    pictures = TensorBoardPictures(misclassified=5)
    trainer = types.SimpleNamespace(sanity_checking=False)
    batches = []
    for _ in range(4):
        images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 3, (6,), generator=generator)
        logits = torch.randn(6, 3, generator=generator)
        batches.append((images, labels, logits))
        pictures.on_validation_batch_end(trainer, None, logits, (images, labels), 0)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    predicted = torch.cat([b[2] for b in batches]).argmax(1)
    wrong = [i for i in range(len(labels)) if predicted[i] != labels[i]][:5]
    assert len(wrong) == 5  # the draw has enough wrong ones for the cut to matter
    shown_images, shown_predicted, shown_true = pictures._misclassified()
    assert torch.equal(shown_images, images[wrong])
    assert shown_predicted.tolist() == predicted[wrong].tolist() and shown_true.tolist() == labels[wrong].tolist()


def test_the_progress_bar_shows_the_loss_without_the_loss_check(monkeypatch):
    """The bar's live loss comes from the loss check when the run has it, and from the step's own loss (read once a
    drawing) when callbacks.stop_on_non_finite_loss=null."""
    from lightning.pytorch.callbacks import RichProgressBar

    # Rich's own drawing and metrics need a running Trainer: stood in for, the bar's own part runs as it is.
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", lambda *args, **kwargs: None)
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: {})
    bar = ProgressBar(refresh_seconds=0.0)
    monkeypatch.setattr(bar, "_due", lambda batch_idx, total: True)  # a drawing is due
    check = StopOnNonFiniteLoss()
    check.shown_loss = 1.25
    with_check = types.SimpleNamespace(callbacks=[bar, check], training=True)
    without_check = types.SimpleNamespace(callbacks=[bar], training=True)

    assert bar.get_metrics(without_check, None) == {}  # nothing read yet
    bar.on_train_batch_end(without_check, None, {"loss": torch.tensor(0.5)}, None, 0)
    assert bar.get_metrics(without_check, None) == {"loss": "0.500"}
    assert bar.get_metrics(with_check, None) == {"loss": "1.250"}


def test_a_run_saved_before_the_callbacks_moved_resumes_with_classes_that_import(make_config):
    """A checkpoint's config names the classes where they lived when it was saved (tinyvision.guards, the old
    tinyvision.checkpoints and tinyvision.pictures ones): resume maps each to where it lives now."""
    import hydra.utils
    from omegaconf import OmegaConf

    from tinyvision.checkpoints import MOVED_TARGETS, _current_targets

    values = OmegaConf.to_container(make_config("callbacks=default"), resolve=False)
    now = {new: old for old, new in MOVED_TARGETS.items() if not old.startswith("tinyvision.guards.")}
    saved = {**values, "callbacks": {name: {**section, "_target_": now.get(section["_target_"], section["_target_"])}
                                     for name, section in values["callbacks"].items()}}
    saved["callbacks"]["stop_on_non_finite_loss"]["_target_"] = "tinyvision.guards.StopOnNonFiniteLoss"
    assert {section["_target_"] for section in saved["callbacks"].values()} & set(MOVED_TARGETS)  # the old names
    resumed = _current_targets(saved)
    for section in resumed["callbacks"].values():
        assert hydra.utils.get_object(section["_target_"])  # every one imports
    assert resumed["callbacks"]["last_checkpoint"]["_target_"] == "tinyvision.callbacks.LastCheckpoint"


class PlainNet(torch.nn.Module):
    """A user's own architecture: it takes the data's shape and nothing else."""

    def __init__(self, in_channels: int, num_classes: int, image_size):
        super().__init__()
        self.head = torch.nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_a_users_model_given_a_key_it_does_not_take_is_one_line_naming_the_key():
    """model._target_ on top of fast_net's defaults hands the user's class fast_net's widths: the line names the key."""
    import pytest

    from tinyvision.errors import ConfigError
    from tinyvision.models import build_model

    target = f"{PlainNet.__module__}.PlainNet"
    assert isinstance(build_model({"_target_": target}, 1, 10, 28), PlainNet)
    with pytest.raises(ConfigError, match=rf"^model.widths=\[24,48,96,96\]: {target} takes no argument widths: remove it"):
        build_model({"_target_": target, "widths": [24, 48, 96, 96]}, 1, 10, 28)



def test_each_run_picture_can_be_left_out(make_config, tmp_path):
    from tinyvision.training import train

    run_dir = tmp_path / "run"
    train(make_config("callbacks=default", "callbacks.run_pictures.results=false", "callbacks.pictures=null",
                      "callbacks.progress_bar=null", "logger=none", "trainer.max_epochs=1", "data.val_size=100", run_dir=run_dir))
    assert (run_dir / "confusion_matrix.png").stat().st_size > 10_000 and not (run_dir / "results.png").exists()

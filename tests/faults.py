"""Faults for the fault suite, injected from outside the run's config (a resumed run takes the run's
own config, which must stay clean):

    python tests/faults.py kill-at-step N train.py ARGS...      # SIGKILL after training step N
    python tests/faults.py term-at-step N train.py ARGS...      # SIGTERM during training step N (a scheduler's stop)
    python tests/faults.py int-at-step N train.py ARGS...       # SIGINT during training step N (Ctrl+C)
    python tests/faults.py usr1-at-step N train.py ARGS...      # SIGUSR1 during training step N (SLURM's warning)
    python tests/faults.py int-in-test N train.py ARGS...       # SIGINT during batch N of the final test (usr1-in-test too)
    python tests/faults.py term-in-test N eval.py ARGS...       # SIGTERM during batch N of a test (eval.py's, train.py's)
    python tests/faults.py term-in-val N train.py ARGS...       # SIGTERM during batch N of a validation (not the sanity check)
    python tests/faults.py term-at-setup 0 SCRIPT ARGS...       # SIGTERM in the model's set-up (train, eval, find_lr)
    python tests/faults.py nan-at-step N train.py ARGS...       # a NaN weight before training step N+1
    python tests/faults.py kill-during-save N train.py ARGS...  # SIGKILL halfway through the N-th checkpoint write
    python tests/faults.py kill-in-trial N train.py -m ARGS...  # SIGKILL the sweep at trial N's 2nd training step
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys

import torch

from tinyvision.module import ImageClassifier


def kill_at_step(step: int) -> None:
    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.trainer.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    ImageClassifier.on_train_batch_end = on_train_batch_end


def signal_at_step(signum: int):
    def at_step(step: int) -> None:
        # Sent while step N is computed, where a signal mostly lands (the step is where the time goes).
        def on_train_batch_start(self, batch, batch_idx):
            if self.trainer.global_step == step - 1:
                os.kill(os.getpid(), signum)

        ImageClassifier.on_train_batch_start = on_train_batch_start

    return at_step


def signal_in_test(signum: int):
    def at_batch(number: int) -> None:
        def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
            if batch_idx == number:
                os.kill(os.getpid(), signum)

        ImageClassifier.on_test_batch_start = on_test_batch_start

    return at_batch


def signal_in_validation(signum: int):
    def at_batch(number: int) -> None:
        def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
            if not self.trainer.sanity_checking and batch_idx == number:
                os.kill(os.getpid(), signum)

        ImageClassifier.on_validation_batch_start = on_validation_batch_start

    return at_batch


def signal_at_setup(signum: int):
    def at_setup(_: int) -> None:
        # While the trainer sets the run up (the model's setup, before its first step or batch)
        def setup(self, stage):
            os.kill(os.getpid(), signum)

        ImageClassifier.setup = setup

    return at_setup


def nan_at_step(step: int) -> None:
    def on_train_batch_start(self, batch, batch_idx):
        if self.trainer.global_step == step:
            with torch.no_grad():
                next(self.parameters()).view(-1)[0] = float("nan")

    ImageClassifier.on_train_batch_start = on_train_batch_start


def kill_in_trial(number: int) -> None:
    def on_train_batch_end(self, outputs, batch, batch_idx):
        trial = (getattr(self, "run_config", None) or {}).get("hparams_search", {}).get("trial")
        if trial == number and self.trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    ImageClassifier.on_train_batch_end = on_train_batch_end


def kill_during_save(nth: int) -> None:
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write") and not isinstance(f, io.BytesIO):
            calls["n"] += 1
            if calls["n"] == nth:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    mode, number, script, *args = sys.argv[1:]
    faults = {"kill-at-step": kill_at_step, "term-at-step": signal_at_step(signal.SIGTERM),
              "int-at-step": signal_at_step(signal.SIGINT),
              "usr1-at-step": signal_at_step(signal.SIGUSR1), "usr2-at-step": signal_at_step(signal.SIGUSR2),
              "int-in-test": signal_in_test(signal.SIGINT), "term-in-test": signal_in_test(signal.SIGTERM),
              "usr1-in-test": signal_in_test(signal.SIGUSR1), "term-in-val": signal_in_validation(signal.SIGTERM),
              "term-at-setup": signal_at_setup(signal.SIGTERM),
              "nan-at-step": nan_at_step, "kill-during-save": kill_during_save,
              "kill-in-trial": kill_in_trial}
    faults[mode](int(number))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")

"""The fault suite: kills, resumes, a diverging loss, DDP, and a changed config, each as a user meets them."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT

pytestmark = pytest.mark.slow  # trains runs in subprocesses: make test-fast leaves these out

# cifar_net_v3 (dropout, BatchNorm) with crop and flip, so the random state and augmentation are tested too.
RUN = ["model=cifar_net_v3", "data=mnist", "data.batch_size=32", "data.val_size=50", "trainer.max_epochs=3",
       "data.augment.crop_padding=2", "data.augment.horizontal_flip=0.5", "optimizer.lr=0.003",
       "callbacks.last_checkpoint.every_n_train_steps=4", "~callbacks.progress_bar", "~callbacks.model_summary"]
if torch.cuda.is_available():  # cuDNN picks non-deterministic kernels unless asked: no run would equal another
    RUN.append("trainer.deterministic=true")


def train(*args: str, fault: tuple[str, int] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prefix = ["tests/faults.py", fault[0], str(fault[1])] if fault else []
    return subprocess.run([sys.executable, *prefix, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults") / "whole"
    result = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    mine, theirs = weights(run_dir), weights(reference)
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), f"{key} differs"
    mine_metrics, their_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    for key in ("test/acc", "test/loss", "val/acc_best", "epochs"):
        assert mine_metrics[key] == their_metrics[key], key
    strip = lambda rows: [{k: v for k, v in row.items() if "seconds" not in k and k != "train_samples"} for row in rows]
    assert strip(mine_metrics["history"]) == strip(their_metrics["history"])
    for tag in ("train/loss", "val/acc"):
        assert scalars(run_dir, tag) == scalars(reference, tag), f"{tag}: repeated or missing steps"


@pytest.mark.parametrize("kill_step", [6, 17])  # mid-epoch 1 (last checkpoint at step 4), mid-epoch 2 (at 16)
def test_sigkill_then_resume_equals_the_uninterrupted_run(uninterrupted, data_root, tmp_path, kill_step):
    run_dir = tmp_path / "run"
    killed = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("kill-at-step", kill_step))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and list((run_dir / ".hydra").glob("resume_*"))


@pytest.mark.parametrize("fault, status", [("term-at-step", 143), ("int-at-step", 130)])
def test_sigterm_or_sigint_saves_the_step_reached_exits_non_zero_and_resumes_bit_identically(
        uninterrupted, data_root, tmp_path, fault, status):
    """A scheduler's SIGTERM (or Ctrl+C) mid-epoch: last.ckpt at that very step (the periodic one was at step 4),
    the resume command, exit 128 + the signal; resumed, the run equals the uninterrupted one bit for bit."""
    run_dir = tmp_path / "run"
    stopped = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=(fault, 6))
    assert stopped.returncode == status, stopped.stderr[-3000:]
    assert f"resume with  python train.py resume={run_dir}" in stopped.stdout + stopped.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
    assert not (run_dir / "metrics.json").exists()
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)
    # the resumed run reports its own throughput: the stopped epoch's seconds before and after the stop count
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_samples_per_second"] > 0 and all(row["train_seconds"] > 0 for row in metrics["history"])
    assert metrics["train_seconds"] == pytest.approx(sum(row["train_seconds"] for row in metrics["history"]), abs=0.05)


def slurm_job(tmp_path: Path, **more: str) -> dict[str, str]:
    """The environment of a SLURM batch job (as sbatch sets it) with a stand-in scontrol that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train",
            "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", **more}


def test_a_slurm_job_warned_of_its_end_requeues_itself_and_its_next_start_resumes_bit_identically(
        uninterrupted, data_root, tmp_path):
    """sbatch --signal=USR1@90: the job writes last.ckpt at the step under way, runs scontrol requeue with its id and
    exits; SLURM starts the same command again (SLURM_RESTART_COUNT=1), which finds its own run folder among the
    others (by the job id written into it) and resumes it; the result equals the run that was never stopped."""
    runs = tmp_path / "runs"
    other = runs / "2000-01-01_00-00-00"  # another job's unfinished run beside it is left alone
    other.mkdir(parents=True)
    (other / ".slurm_job").write_text("999\n")
    command = [*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={runs}/${{now:%Y-%m-%d_%H-%M-%S}}"]
    stopped = train(*command, fault=("usr1-at-step", 6), env=slurm_job(tmp_path))
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    (run_dir,) = [folder for folder in runs.iterdir() if folder != other]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert "SLURM job 4242 is requeued" in stopped.stdout + stopped.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
    assert not (run_dir / "metrics.json").exists()

    restarted = train(*command, env=slurm_job(tmp_path, SLURM_RESTART_COUNT="1"))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert sorted(runs.iterdir()) == sorted([run_dir, other])  # no new folder: the job went on in its own
    assert list((run_dir / ".hydra").glob("resume_*"))
    assert_same_run(run_dir, uninterrupted)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # requeued once, by the signal only


def test_slurm_s_warning_during_the_final_test_lets_the_test_finish(data_root, tmp_path):
    """The warning lands after the last step, in the test: the run finishes (exit 0, metrics.json) and is not requeued;
    never the signal's default action, which ends the process and loses the job."""
    run_dir = tmp_path / "run"
    done = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("usr1-in-test", 0),
                 env=slurm_job(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file() and not (tmp_path / "scontrol.log").exists()


def test_a_batch_script_of_two_commands_requeued_continues_each_in_its_own_folder(uninterrupted, data_root, tmp_path):
    """A job runs a short run to its end, then this run, which SLURM warns: after the requeue the first command finds
    its run finished (nothing trained again, no new folder), the second resumes its own folder, not the first's."""
    runs = tmp_path / "runs"
    where = f"hydra.run.dir={runs}/${{now:%Y-%m-%d_%H-%M-%S}}"
    first = ["model=lenet", "data=mnist", "data.val_size=50", "trainer.max_epochs=1", "callbacks=minimal",
             f"paths.data_dir={data_root}", where]
    second = [*RUN, f"paths.data_dir={data_root}", where]
    assert train(*first, env=slurm_job(tmp_path)).returncode == 0
    stopped = train(*second, fault=("usr1-at-step", 6), env=slurm_job(tmp_path))
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    folders = sorted(runs.iterdir())
    restarted = slurm_job(tmp_path, SLURM_RESTART_COUNT="1")
    again = train(*first, env=restarted)
    assert again.returncode == 0 and "nothing left to do" in again.stdout, again.stderr[-3000:]
    assert train(*second, env=restarted).returncode == 0
    assert sorted(runs.iterdir()) == folders
    (second_dir,) = [f for f in folders if json.loads((f / ".slurm_job").read_text())["command"][0] == RUN[0]]
    assert_same_run(second_dir, uninterrupted)


def test_a_sweep_in_a_requeued_slurm_job_goes_on_in_its_own_folder(uninterrupted, data_root, tmp_path):
    """python train.py -m in a batch job, warned during its first trial: after the requeue the sweep continues in its
    folder (the default one names a new folder at each start), the first trial resumes to the uninterrupted result."""
    sweeps = tmp_path / "multirun"
    command = ["-m", *RUN, "optimizer.lr=0.003,0.001", f"paths.data_dir={data_root}",
               f"hydra.sweep.dir={sweeps}/${{now:%Y-%m-%d_%H-%M-%S}}"]
    stopped = train(*command, fault=("usr1-at-step", 6), env=slurm_job(tmp_path))
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    (sweep,) = sweeps.iterdir()
    restarted = train(*command, env=slurm_job(tmp_path, SLURM_RESTART_COUNT="1"))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert list(sweeps.iterdir()) == [sweep]
    assert all((sweep / str(job) / "metrics.json").is_file() for job in (0, 1))
    assert_same_run(sweep / "0", uninterrupted)


def test_ctrl_c_during_the_final_test_exits_130_and_the_resumed_run_tests_again(uninterrupted, data_root, tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("int-in-test", 1))
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert f"resume with  python train.py resume={run_dir}" in stopped.stdout + stopped.stderr
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)


def test_a_command_refused_inside_a_slurm_job_leaves_no_folder(data_root, tmp_path):
    refused = subprocess.run([sys.executable, str(ROOT / "train.py"), "optimizer.lr=abc", f"paths.data_dir={data_root}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600, env=slurm_job(tmp_path))
    assert refused.returncode == 2 and "error: optimizer.lr=abc" in refused.stderr
    assert list((tmp_path / "outputs" / "runs").iterdir()) == []


def test_ddp_with_fewer_slurm_tasks_than_devices_is_one_line_before_training(data_root, tmp_path):
    refused = subprocess.run([sys.executable, str(ROOT / "train.py"), "trainer=ddp", f"paths.data_dir={data_root}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env=slurm_job(tmp_path, SLURM_NTASKS_PER_NODE="1", SLURM_NODELIST="localhost"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines() == [
        "error: trainer.devices=2: You set `devices=2` in Lightning, but the number of tasks per node configured in SLURM "
        "`--ntasks-per-node=1` does not match. HINT: Set `devices=1`. Ask SLURM for one task per device "
        "(#SBATCH --ntasks-per-node=2) and run the command under srun"]
    assert list((tmp_path / "outputs" / "runs").iterdir()) == []


def job_state(job: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


def slurm_logs(conf: str, lines: int = 30) -> str:
    """The ends of the test cluster's daemon logs, for a failure's message: SLURM says there why a job failed."""
    folder = Path(conf).parent
    return "".join(f"\n--- {name}:\n" + "\n".join((folder / name).read_text(errors="replace").splitlines()[-lines:])
                   for name in ("slurmctld.log", "slurmd.log") if (folder / name).is_file())


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.2)


def test_on_a_real_slurm_cluster_a_job_signalled_to_end_requeues_and_resumes_bit_identically(
        uninterrupted, data_root, tmp_path, slurm_cluster):
    """The batch script of the docs (srun under sbatch --requeue) on the one-node cluster of tools/slurm_cluster.sh:
    `scancel --signal=USR1` as SLURM sends before a time limit or a preemption; the job checkpoints, requeues itself
    with the real scontrol, SLURM starts it again, and it resumes its own folder to the uninterrupted run's result."""
    runs, log = tmp_path / "runs", tmp_path / "job.out"
    command = " ".join(shlex.quote(arg) for arg in [sys.executable, "train.py", *RUN, f"paths.data_dir={data_root}",
                                                      f"hydra.run.dir={runs}/${{now:%Y-%m-%d_%H-%M-%S}}"])
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --ntasks=1\n#SBATCH --requeue\n#SBATCH --output={log}\n"
                      f"#SBATCH --open-mode=append\ncd {ROOT}\nsrun {command}\n")
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_for(lambda: any(runs.glob("*/checkpoints/last.ckpt")), 300, "the job's first checkpoint")
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        wait_for(lambda: job_state(job).get("Restarts", "0") != "0", 120, "the job to requeue itself")
        # SLURM holds the requeued job back until the old start's credential expires (30 s on the test cluster): a
        # job started before that (scontrol update StartTime=now) can fail to launch, without a line of output
        wait_for(lambda: job_state(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", None), 600, "the job to end")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    output = log.read_text()
    assert job_state(job).get("JobState") == "COMPLETED", output[-3000:] + slurm_logs(slurm_cluster)
    assert f"SLURM job {job} is requeued" in output
    (run_dir,) = runs.iterdir()  # the second start went on in the first one's folder
    assert_same_run(run_dir, uninterrupted)


def test_kill_during_a_checkpoint_write_leaves_a_loadable_checkpoint(uninterrupted, data_root, tmp_path):
    run_dir = tmp_path / "run"
    # Writes: last at steps 4 and 8, best after validation, last at the end of epoch 1 (step 11): that 4th
    # write is cut in half by SIGKILL.
    killed = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("kill-during-save", 4))
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 8  # the previous checkpoint, whole
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)


def test_resume_with_a_changed_config_is_refused(data_root, tmp_path):
    run_dir = tmp_path / "run"
    train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("kill-at-step", 5))
    result = train(*RUN, "optimizer.lr=0.5", f"paths.data_dir={data_root}", f"resume={run_dir}")
    assert result.returncode == 2
    assert f"resume={run_dir} was started with other settings than this command" in result.stderr
    assert "optimizer.lr: 0.003 in the run -> 0.5 in this command" in result.stderr


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    result = train(f"resume={tmp_path / 'run'}")
    assert result.returncode == 2
    assert f"resume={tmp_path / 'run'} has no checkpoints/last.ckpt: the run stopped before its first checkpoint" in result.stderr


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    run_dir = tmp_path / "run"
    result = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("nan-at-step", 6))
    assert result.returncode == 2
    assert "error: the training loss became nan at step 7 (epoch 1, batch 7); the last finite loss was" in result.stderr
    assert "Likely causes: a learning rate too high (optimizer.lr=0.003" in result.stderr
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(t).all() for k, t in checkpoint["state_dict"].items() if k.startswith("net."))


DDP = ["model=lenet", "data=mnist", "data.batch_size=32", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_ddp_on_two_cpu_processes(data_root, tmp_path):
    """Two gloo ranks train and test; the test figures they log are those of the best checkpoint evaluated
    in one process, over the same images."""
    from tinyvision.inference import datamodule_for, load_classifier

    run_dir = tmp_path / "run"
    # data.eval_batch_size=32: each rank tests its 50 images in batches of 32 and 18, so a short last batch must
    # count for its size in the logged loss.
    result = train(*DDP, "data.val_size=50", "data.eval_batch_size=32", "trainer.max_epochs=2", f"paths.data_dir={data_root}",
                   f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    # 350 images split over two ranks: 175 each, in 6 batches of up to 32 (one process would take 11).
    assert scalars(run_dir, "val/acc")[-1][0] == 2 * 6 - 1
    assert [p.name for p in run_dir.iterdir() if p.name == "tensorboard"] == ["tensorboard"]
    assert result.stdout.count("test accuracy") == 1  # one summary, from rank zero
    # The same best checkpoint, evaluated in this one process over the whole test split
    classifier = load_classifier(metrics["best_checkpoint"])
    datamodule = datamodule_for(classifier, None, str(data_root))
    datamodule.setup("test")
    images, labels = datamodule.splits["test"]
    with torch.inference_mode():
        logits = classifier(images)
    assert len(labels) == 100
    assert metrics["test/acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
    # the mean loss too: every image moves it, whatever the accuracy of this barely trained LeNet
    assert metrics["test/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_two_nodes_started_with_torchrun_train_the_run_two_processes_on_one_node_train(data_root, tmp_path):
    """The README's multi-node recipe on localhost: torchrun --nnodes=2, one gloo process a "node", both writing to one
    folder (a shared disk); rank zero alone writes, and the run equals `trainer=ddp trainer.devices=2` on one node with
    the same seed: the same global ranks draw the same shares, so the same weights and figures."""
    import socket

    common = ["model=lenet", "data=mnist", "data.batch_size=32", "data.val_size=50", "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.max_epochs=1", "callbacks=minimal", f"paths.data_dir={data_root}"]
    one_node = train(*common, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'one'}")
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
                               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", "train.py", *common,
                               "trainer.devices=1", "+trainer.num_nodes=2", f"hydra.run.dir={tmp_path / 'two'}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    for name, tensor in weights(tmp_path / "one").items():
        assert torch.allclose(weights(tmp_path / "two")[name], tensor, atol=1e-6), name
    assert sum(out.count("test accuracy") for out, _ in outputs) == 1  # one summary: rank zero's


def test_ddp_tests_a_split_that_does_not_divide_by_the_ranks(tmp_path):
    """101 test images over two ranks (51 and 50): the final test finishes, and counts each image once."""
    from conftest import write_idx_dataset

    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    write_idx_dataset(data_dir / "MNIST" / "raw", sizes=(400, 101), seed=0)
    result = train(*DDP, "data.val_size=50", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "callbacks=minimal",
                   f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert "collective mismatch" not in result.stderr, result.stderr[-1500:]  # the bug: unequal all_gather in TestReport
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["test_report"]["images"] == 101


def test_deterministic_is_reset_between_jobs(make_config, tmp_path):
    from tinyvision.training import train as train_in_process

    quick = ("trainer=debug", "logger=none", "model=mlp", "data.val_size=16")
    train_in_process(make_config(*quick, "trainer.deterministic=true", run_dir=tmp_path / "first"))
    assert torch.are_deterministic_algorithms_enabled()
    train_in_process(make_config(*quick, run_dir=tmp_path / "second"))  # the next job of a sweep
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_resumed_run_logs_on_into_the_same_mlflow_run(data_root, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={store}",
              f"logger.mlflow.artifact_location={(tmp_path / 'artifacts').as_uri()}"]
    killed = train(*RUN, *logged, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("kill-at-step", 17))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("tinyvision").experiment_id])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.value for m in history] == pytest.approx([row["val/acc"] for row in metrics["history"]])  # epochs 1-3, once each
    assert run.data.params["model"] == "cifar_net_v3"
    assert run.info.status == "FINISHED" and "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


RECIPE = ["data.augment.mixup_alpha=0.2", "data.augment.cutmix_alpha=1.0", "scheduler.warmup_epochs=1", "loss.label_smoothing=0.1",
          "loss.class_weights=auto", "callbacks.ema.decay=0.9", "data.augment.erasing=0.5", "data.augment.translate=2",
          "data.augment.trivial_augment=true", "data.augment.color_jitter=0.3"]  # every knob the README says resumes


def test_sigkill_then_resume_is_bit_identical_with_mixing_warmup_weights_and_ema(data_root, tmp_path):
    reference, run_dir = tmp_path / "whole", tmp_path / "run"
    whole = train(*RUN, *RECIPE, f"paths.data_dir={data_root}", f"hydra.run.dir={reference}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = train(*RUN, *RECIPE, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("kill-at-step", 6))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, reference)


def test_a_moved_run_folder_resumes_in_its_new_place(uninterrupted, data_root, tmp_path):
    """Stopped, then moved (as to another disk): resumed, it writes only into its new folder and equals the run
    that was never stopped."""
    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "moved"
    stopped = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={first}", fault=("term-at-step", 6))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    moved.parent.mkdir()
    first.rename(moved)
    resumed = train(f"resume={moved}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not first.exists()  # nothing written into the old place
    assert json.loads((moved / "metrics.json").read_text())["best_checkpoint"] == str(moved / "checkpoints" / "best.ckpt")
    assert not list((moved / "checkpoints").glob("best-v*.ckpt"))  # best.ckpt itself, not a second one beside it
    assert_same_run(moved, uninterrupted)


def test_two_runs_started_at_once_get_two_folders(data_root, tmp_path):
    """Same command, same second, default folder: each run claims its own folder (the second one ..._2)."""
    command = [sys.executable, str(ROOT / "train.py"), "model=lenet", "data=mnist", "data.val_size=50", "trainer.max_epochs=1",
               "callbacks=minimal", f"paths.data_dir={data_root}"]
    runs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    folders = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(folders) == 2 and all((folder / "metrics.json").is_file() for folder in folders)
    # each folder holds one process's TensorBoard events (the writer's PID is in each file's name), not two merged
    writers = [{name.name.split(".")[-2] for name in (folder / "tensorboard").rglob("events.out.tfevents.*")} for folder in folders]
    assert all(len(pids) == 1 for pids in writers) and writers[0] != writers[1]


def test_a_run_given_the_folder_of_another_run_is_refused_and_touches_nothing(uninterrupted, data_root, tmp_path):
    before = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    refused = train("model=convnet", "optimizer.lr=0.5", f"paths.data_dir={data_root}", f"hydra.run.dir={uninterrupted}")
    assert refused.returncode == 2
    # a finished run: no resume= is offered (it would be refused)
    assert refused.stderr.strip() == f"error: hydra.run.dir={uninterrupted} already holds a run: it is kept as it is; choose a new folder"
    assert {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()} == before


def test_a_refused_run_leaves_no_folder(data_root, tmp_path):
    refused = subprocess.run([sys.executable, str(ROOT / "train.py"), "optimizer.lr=abc", f"paths.data_dir={data_root}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "error: optimizer.lr=abc" in refused.stderr
    assert list((tmp_path / "outputs" / "runs").iterdir()) == []


# ---------------------------------------------------------------------------------------------- output folders, signals, console
# Each command owns its output folder; a signal or a closed console never makes unfinished work look finished, nor
# finished work look failed (docs/faults-and-resume.md, "What each command leaves behind").
QUICK = ["model=lenet", "data=mnist", "data.val_size=50", "trainer.max_epochs=1", "callbacks=minimal", "logger=none"]


def command(script: str, *args: str, fault: tuple[str, int] | None = None, cwd: Path = ROOT,
            **popen) -> subprocess.CompletedProcess:
    prefix = [str(ROOT / "tests" / "faults.py"), fault[0], str(fault[1])] if fault else []
    return subprocess.run([sys.executable, *prefix, str(ROOT / script), *args], cwd=cwd, text=True, timeout=600,
                          **({"capture_output": True} | popen))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = command("train.py", *QUICK, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("script", ["eval.py", "find_lr.py", "train.py"])
def test_a_command_given_the_folder_of_a_finished_run_is_refused_and_changes_nothing(script, finished_run, data_root):
    """eval.py used to replace the run's metrics.json, per_class.csv and .hydra/config.yaml and exit 0; find_lr.py its
    config."""
    before = snapshot(finished_run)
    args = {"eval.py": [f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}"], "find_lr.py": QUICK, "train.py": QUICK}[script]
    refused = command(script, *args, f"paths.data_dir={data_root}", f"hydra.run.dir={finished_run}")
    assert refused.returncode == 2
    assert error_line(refused) == (f"error: hydra.run.dir={finished_run} already holds a run: it is kept as it is; "
                                   "choose a new folder")
    assert snapshot(finished_run) == before


def test_an_empty_run_folder_setting_is_refused_and_writes_nothing(data_root, tmp_path):
    refused = command("train.py", *QUICK, f"paths.data_dir={data_root}", "hydra.run.dir=", cwd=tmp_path)
    assert refused.returncode == 2
    assert error_line(refused).startswith("error: hydra.run.dir= names no folder (it would write into the current one)")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_given_an_earlier_sweep_s_folder_is_refused_and_changes_nothing(data_root, tmp_path):
    """It used to fail every job, write failure.json beside their metrics.json, replace summary.md and exit 0."""
    earlier = tmp_path / "sweep"
    for job in ("0", "1"):
        (earlier / job / ".hydra").mkdir(parents=True)
        (earlier / job / "metrics.json").write_text('{"test/acc": 0.5}')
    (earlier / "summary.md").write_text("# the earlier sweep\n")
    before = snapshot(earlier)
    refused = command("train.py", "-m", *QUICK, "seed=1,2", f"paths.data_dir={data_root}", f"hydra.sweep.dir={earlier}")
    assert refused.returncode == 2
    assert error_line(refused) == (f"error: hydra.sweep.dir={earlier} already holds an earlier sweep: it is kept as it is; "
                                   "choose a new folder")
    assert snapshot(earlier) == before


def test_two_runs_given_one_new_folder_at_once_one_trains_the_other_is_refused(data_root, tmp_path):
    """Both used to train into it and exit 0."""
    run_dir = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), *QUICK, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}"]
    runs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.returncode, *output) for run, output in ((run, run.communicate(timeout=600)) for run in runs)]
    assert sorted(status for status, _, _ in results) == [0, 2], [err[-2000:] for _, _, err in results]
    (refused,) = [err for status, _, err in results if status == 2]
    assert refused.strip().startswith(f"error: hydra.run.dir={run_dir} ") and "choose a new folder" in refused
    assert (run_dir / "metrics.json").is_file()


def test_a_refused_resume_writes_nothing_into_the_run(data_root, tmp_path):
    """The refused resume= used to leave .hydra/resume_<time>/ and its log lines in the folder it refused."""
    run_dir = tmp_path / "run"
    stopped = command("train.py", *QUICK, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("term-at-step", 3))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # the checkpoint the stop's line names
    before = snapshot(run_dir)
    refused = command("train.py", f"resume={run_dir}", "optimizer.lr=0.5")
    assert refused.returncode == 2
    line = error_line(refused)
    assert line.startswith(f"error: resume={run_dir} was started with other settings than this command: optimizer.lr: ")
    assert "callbacks" not in line and "logger" not in line  # only what the command gives, not the defaults it left out
    assert snapshot(run_dir) == before


def test_sigterm_in_the_first_step_of_a_run_without_checkpoints_promises_none(data_root, tmp_path):
    """trainer=debug saves no checkpoint: the stop's line used to name a last.ckpt that did not exist."""
    run_dir = tmp_path / "run"
    stopped = command("train.py", "model=lenet", "data=mnist", "data.val_size=50", "trainer=debug", "callbacks=minimal",
                      "logger=none", f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("term-at-step", 1))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    output = stopped.stdout + stopped.stderr
    assert "no checkpoint was written" in output and "holds the step reached" not in output


@pytest.mark.parametrize("fault, status", [("term-in-test", 143), ("int-in-test", 130)])
def test_a_signal_during_eval_s_test_exits_with_the_signal_and_no_metrics(fault, status, finished_run, data_root, tmp_path):
    """SIGTERM used to exit 0 (Lightning's SystemExit) and Ctrl+C 1, both without metrics.json."""
    out = tmp_path / "eval"
    stopped = command("eval.py", f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}", "batch_size=16",
                      f"paths.data_dir={data_root}", f"hydra.run.dir={out}", fault=(fault, 1))
    assert stopped.returncode == status, stopped.stderr[-3000:]
    assert "before eval.py finished" in stopped.stderr
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_a_run_whose_console_is_gone_finishes_writes_its_files_and_exits_0(closed, data_root, tmp_path):
    """`python train.py ... | head -3` used to die with its reader (exit 1, no metrics.json); `2>&-` too."""
    run_dir = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), *QUICK, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}"]
    if closed == "stdout":  # the reader leaves before the first line: every write meets a broken pipe
        run = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        run.stdout.close()
    else:  # started with the descriptor closed, as 2>&- does
        run = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    assert run.wait(timeout=600) == 0
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_predict_writes_its_output_when_nobody_reads_the_console(finished_run, data_root, tmp_path):
    """`predict.py ... output=p.json | true` used to lose p.json: the table was printed first."""
    from PIL import Image

    photo, output = tmp_path / "photo.png", tmp_path / "p.json"
    Image.open(next((data_root / "ants_bees" / "ants").iterdir())).convert("L").save(photo)
    run = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}",
                            f"inputs={photo}", f"output={output}", f"hydra.run.dir={tmp_path / 'predict'}"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    run.stdout.close()
    assert run.wait(timeout=600) == 0
    assert json.loads(output.read_text())["predictions"][0]["file"] == str(photo)


def test_export_refuses_to_replace_a_file_that_is_not_an_export(finished_run, tmp_path):
    foreign = tmp_path / "model.onnx"
    foreign.write_bytes(b"another tool's model")
    refused = command("export.py", f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}", f"output={foreign}",
                      f"hydra.run.dir={tmp_path / 'export'}")
    assert refused.returncode == 2
    assert error_line(refused).startswith(f"error: output={foreign}: {foreign} exists and is not a model written by export.py")
    assert foreign.read_bytes() == b"another tool's model" and not (tmp_path / "export").exists()


def test_a_sweep_with_a_failed_job_says_so_in_its_last_line_and_exits_1(tmp_path, capsys):
    from omegaconf import OmegaConf

    from tinyvision.sweep import SweepSummary

    for job, seed in (("0", 1), ("1", 2)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"val/acc_best": 0.9, "test/acc": 0.8, "epochs": 1,
                                                             "wall_seconds": 1.0}))
    (tmp_path / "1" / "failure.json").write_text(json.dumps({"error": "data.val_size=500 does not fit"}))
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert ended.value.code == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"1 of 2 jobs did not finish (job 1: failed); their errors are in {tmp_path / 'summary.md'}"


@pytest.mark.parametrize("doctored, expected", [
    ("foreign", "checkpoints/last.ckpt holds a config that is not a tinyvision training run's (it lacks data, optimizer"),
    ("no optimizer", "checkpoints/last.ckpt holds a config that is not a tinyvision training run's (it lacks optimizer)"),
    ("another network", "the weights in this file do not fit the network its saved config builds"),
])
def test_a_checkpoint_whose_saved_config_does_not_fit_is_refused_in_one_line(doctored, expected, finished_run, tmp_path,
                                                                               data_root):
    import shutil

    import torch

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    continued = []
    if doctored == "another network":  # a finished run continued: its record stays as it was
        finished = json.loads((run_dir / "metrics.json").read_text())
        continued = [f"trainer.max_epochs={finished['epochs'] + 1}"]
    else:
        (run_dir / "metrics.json").unlink()  # an unfinished run, resumed as it is
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    if doctored == "foreign":
        checkpoint["config"] = {"model": {"name": "resnet"}, "lr": 0.1}
    elif doctored == "no optimizer":
        del checkpoint["config"]["optimizer"]
    else:
        checkpoint["config"]["model"] = {"_target_": "tinyvision.models.MLP"}
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    result = command("train.py", f"resume={run_dir}", f"paths.data_dir={data_root}", *continued)
    assert result.returncode == 2 and expected in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Restoring states" not in result.stderr + result.stdout  # refused before Lightning's notes
    if continued:
        assert json.loads((run_dir / "metrics.json").read_text()) == finished
        assert not list(run_dir.glob("metrics_epoch*.json"))


def test_sigterm_in_validation_resumes_from_the_last_checkpoint_bit_identically(uninterrupted, data_root, tmp_path):
    """A stop during a validation: the run exits 143 naming the last checkpoint written (the periodic one), which
    resumes to the uninterrupted run."""
    run_dir = tmp_path / "run"
    stopped = train(*RUN, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", fault=("term-in-val", 1))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert f"resume with  python train.py resume={run_dir}" in stopped.stdout + stopped.stderr
    assert not (run_dir / "metrics.json").exists()
    resumed = train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize("script", ["train.py", "eval.py", "find_lr.py"])
def test_sigterm_at_set_up_exits_143_and_the_same_command_starts_again_in_its_folder(script, finished_run, data_root,
                                                                                     tmp_path):
    """Stopped while the trainer sets the run up (before any step or batch): exit 143, nothing of the command's own
    written, and the command line given again (its hydra.run.dir included) runs in that folder."""
    out = tmp_path / "out"
    args = {"train.py": QUICK, "find_lr.py": QUICK,
            "eval.py": [f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}", "batch_size=64"]}[script]
    args = [*args, f"paths.data_dir={data_root}", f"hydra.run.dir={out}"]
    stopped = command(script, *args, fault=("term-at-setup", 0))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert not {"metrics.json", "lr_find.json", "checkpoints"} & {path.name for path in out.iterdir()}
    if script == "train.py":  # another script does not take the stopped run's folder
        other = command("eval.py", f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={out}")
        assert other.returncode == 2 and "already holds another command's output" in error_line(other)
    again = command(script, *args)
    # find_lr.py exits 1 when it can suggest no lr, as on the random images here; a refused folder would be 2
    assert again.returncode == (1 if script == "find_lr.py" else 0), again.stderr[-3000:]
    assert (out / ("lr_find.json" if script == "find_lr.py" else "metrics.json")).is_file()

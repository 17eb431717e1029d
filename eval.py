"""Test a checkpoint: python eval.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt [data=...]."""

from tinyvision.cli import run_script
from tinyvision.evaluation import evaluate

if __name__ == "__main__":
    run_script("eval", evaluate)

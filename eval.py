"""Test a checkpoint: python eval.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt [data=...]."""

from tinyvision.cli import run_script


def main(cfg) -> dict:
    from tinyvision.evaluation import evaluate  # after the command line's check: a typo is answered before torch loads

    return evaluate(cfg)


if __name__ == "__main__":
    run_script("eval", main)

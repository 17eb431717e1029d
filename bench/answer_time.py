"""How long a user waits for an answer that needs no training: `python train.py --help` and a misspelt key, beside
`python -c "import lightning"` (the floor of any answer that loads Lightning).

    python bench/answer_time.py [--rounds 7]

Each round runs every command once, in turn (interleaved, so that the machine's load swings hit them alike); the
figures are the median seconds over rounds and the median of each round's ratio to `import lightning`. The commands
run from the repository root with this Python, their output discarded; the misspelt key must exit 2 (refused) and
--help 0, or the round is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import lightning": (["-c", "import lightning"], 0),
    "train.py --help": (["train.py", "--help"], 0),
    "train.py optimzer.lr=0.1 (a typo)": (["train.py", "optimzer.lr=0.1"], 2),
    "eval.py ckpt_path=x.ckpt trainer.max_epoch=3 (a typo)": (["eval.py", "ckpt_path=x.ckpt", "trainer.max_epoch=3"], 2),
}


def seconds(arguments: list[str], status: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if done.returncode != status:
        raise SystemExit(f"{' '.join(arguments)} exited {done.returncode}, not {status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, (arguments, status) in COMMANDS.items():
            times[name].append(seconds(arguments, status))
    floor = times["import lightning"]
    print(f"| command | median s ({rounds} rounds) | ratio to import lightning (median of rounds) |")
    print("|---|---:|---:|")
    for name, values in times.items():
        ratio = statistics.median(value / base for value, base in zip(values, floor))
        print(f"| `{name}` | {statistics.median(values):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()

"""Find a learning rate: python find_lr.py model=... data=... optimizer=... [any train.py override].

Prints the suggested lr and the train.py command that uses it, and saves the loss-vs-lr plot as lr_find.png in the
run folder; exits 1 when no lr could be suggested (see tinyvision.lr_find)."""

import sys

from tinyvision.cli import run_script


def main(cfg) -> None:
    from tinyvision.lr_find import find_lr  # after the command line's check: a typo is answered before torch loads

    if find_lr(cfg) is None:
        sys.exit(1)


if __name__ == "__main__":
    run_script("lr_find", main)

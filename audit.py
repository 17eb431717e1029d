"""Audit a k-fold sweep's data: python audit.py sweep=outputs/multirun/<sweep> [method=...] [top=32] [duplicates=true].

Writes label_issues.csv, label_issues.png, duplicates.csv and audit.json into the sweep folder (docs/audit.md); a k-fold
sweep runs it by itself when its last fold finishes, and this reruns it with other settings."""

from omegaconf import DictConfig

from tinyvision.audit import AuditSettings, audit_sweep
from tinyvision.audit.report import summary_line
from tinyvision.cli import run_script
from tinyvision.schema import check, to_container


def main(cfg: DictConfig) -> None:
    settings = check(AuditSettings, to_container(cfg), "")
    for summary in audit_sweep(settings.sweep, settings.method, settings.top, settings.duplicates):
        print(summary_line(summary), flush=True)


if __name__ == "__main__":
    run_script("audit", main)

"""The data audit: likely mislabeled images from the out-of-fold probabilities of a k-fold sweep (confident learning),
duplicates and train/test leakage, and the class counts (docs/audit.md).

- heldout.py: each k-fold job's held-out probabilities (heldout.csv), and the folds of a sweep stitched together
- confident.py: confident learning's steps (per-class thresholds, the confident joint, pruning by noise rate)
- duplicates.py: exact and near-duplicate images (a difference hash), within training and between training and test
- report.py: the audit of a sweep folder: label_issues.csv, label_issues.png, duplicates.csv, and its summary line
"""

from tinyvision.audit.report import AuditSettings, audit_at_sweep_end, audit_sweep

__all__ = ["AuditSettings", "audit_at_sweep_end", "audit_sweep"]

"""Exact and near-duplicate images by a difference hash (dHash: a 9×8 grey thumbnail, each pixel compared with its
right neighbour, 64 bits): images of one hash are near duplicates, of the same bytes exact ones. Hashing is linear in
the number of images; a Hamming radius above 0 would need a pairwise search that 60,000 images make slow."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F


def difference_hashes(images: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """uint8 N×C×H×W images -> N 64-bit hashes."""
    found = []
    weights = torch.tensor([1 << k for k in range(63)] + [-(1 << 63)], dtype=torch.int64)  # bit 63 as int64's sign
    for start in range(0, len(images), batch):
        grey = images[start:start + batch].float().mean(dim=1, keepdim=True)
        small = F.interpolate(grey, size=(8, 9), mode="area")[:, 0]
        bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(small), 64).to(torch.int64)
        found.append((bits * weights).sum(dim=1).numpy())
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def byte_digests(images: torch.Tensor) -> list[str]:
    return [hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).hexdigest() for image in images]


def duplicate_pairs(train: torch.Tensor, test: torch.Tensor | None) -> list[tuple[str, str, int, str, int]]:
    """(kind, first split, first row, second split, second row): each image of a group of equal hashes paired with
    the group's first training image (a group of n gives n-1 pairs, not n²), exact before near."""
    splits = [("train", train)] + ([("test", test)] if test is not None and len(test) else [])
    entries = []  # (hash, split, row, digest)
    for name, images in splits:
        hashes, digests = difference_hashes(images.cpu()), byte_digests(images.cpu())
        entries += [(int(h), name, row, d) for row, (h, d) in enumerate(zip(hashes, digests))]
    groups: dict[int, list[tuple[str, int, str]]] = {}
    for value, name, row, digest in entries:
        groups.setdefault(value, []).append((name, row, digest))
    pairs = []
    for members in groups.values():
        if len(members) < 2 or members[0][0] != "train":
            continue  # a group of test images alone is no leak and no training duplicate
        first = members[0]
        for other in members[1:]:
            kind = "exact" if other[2] == first[2] else "near"
            pairs.append((kind, first[0], first[1], other[0], other[1]))
    return sorted(pairs, key=lambda p: (p[0] != "exact", p[3] != "test", p[2], p[4]))

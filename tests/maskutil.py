"""Small mask comparisons shared by the method tests."""

import torch


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def kept(mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


def total(mask) -> int:
    return sum(m.numel() for m in mask.values())

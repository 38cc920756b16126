"""What the ranks of a multi-process run share: each rank's part of a batch gathered into the whole batch.

TRL computes rewards on each rank's own completions, then concatenates them in rank order and normalises advantages
over consecutive blocks of NUM_GENERATIONS: a GRPO group can span ranks (4 completions per rank and groups of 8).
A batch-level measure (a group's diversity) must therefore see the gathered batch, in that same order.
"""

from __future__ import annotations

from typing import Any

import torch


def distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and (
        torch.distributed.get_world_size() > 1)


def gather_in_rank_order(local: list[Any]) -> tuple[list[Any], slice]:
    """Every rank's ``local`` items concatenated in rank order (TRL's batch order), and where this rank's items are
    in it. With one process: ``local`` itself. Items must be picklable (numbers, arrays, tuples)."""
    if not distributed():
        return list(local), slice(0, len(local))
    parts: list[list[Any]] = [[] for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather_object(parts, list(local))
    start = sum(len(part) for part in parts[: torch.distributed.get_rank()])
    return [item for part in parts for item in part], slice(start, start + len(local))

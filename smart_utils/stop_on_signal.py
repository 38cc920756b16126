"""Ctrl-C or SIGTERM stops a SMART run after the current step, with a checkpoint, so ``--RESUME`` can continue it.

A separate module from run_folder.py because it needs torch and transformers, which smart.py loads only once the
config is checked; run_folder.py is needed before that.
"""

from __future__ import annotations

import signal

import torch
from transformers import TrainerCallback


class StopOnSignal(TrainerCallback):
    """On Ctrl-C / SIGTERM, finish the current step, save a checkpoint and stop, so the run can be resumed.

    With several processes every rank must stop after the same step: one that went on would wait in TRL's next
    gather for ranks that have left, until the collective timeout, and no checkpoint would be written. Ranks can
    see a signal at different steps (it reached one rank only, or arrived at a step's end), so after each step
    they agree: any rank's request stops them all (``any_rank``).

    The handlers are this process's until ``uninstall``, which smart.py calls once the tuned model is saved:
    after that Ctrl-C stops the end-of-run report (KeyboardInterrupt) instead of asking a finished training for
    a checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}

    def uninstall(self) -> None:
        """Give SIGINT and SIGTERM back to the handlers they had before (Python's: KeyboardInterrupt, exit)."""
        for sig, handler in self.previous.items():
            if signal.getsignal(sig) == self._request:  # not replaced since by someone else
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self.previous = {}

    def _request(self, signum: int, _frame: object) -> None:
        print(f"\n[smart] {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.requested, None if args is None else args.device):
            if not self.requested:
                print("\n[smart] another process was asked to stop: saving a checkpoint after this step, then stopping")
            control.should_save = True
            control.should_training_stop = True
        return control


def any_rank(flag: bool, device: torch.device | None) -> bool:
    """``flag`` or'ed over all ranks (a MAX all-reduce on ``device``, which NCCL needs to be the rank's GPU);
    ``flag`` itself when there is one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    if torch.distributed.get_world_size() == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
    return bool(agreed.item())

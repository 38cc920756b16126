"""The watch: what a run measures beside the reward it optimises, to tell progress from over-optimisation.

The paper saw that optimising Audiobox's Content Enjoyment for long enough (or with no KL penalty) "dramatically
reduces diversity": the trained reward keeps rising while the music collapses onto a few patterns. The watch makes
that visible while the run goes, every ``interval`` reward steps, without ever entering the reward:

- ``watch/<name>``: held-out judges (smart.py's WATCH_REWARDS), rewards computed on copies of the records and
  logged, never weighted; and ``watch/<name>@<soundfont>``: the trained audio rewards re-scored with held-out
  soundfonts (WATCH_SOUNDFONTS), which a policy that games one soundfont's rendering cannot raise;
- ``watch/diversity`` and ``watch/group_diversity``: evaluation's diversity measure (mean pairwise style distance,
  smart_utils/features.py) over the step's whole batch and within its GRPO groups, over all ranks.

Each value goes to the trainer's log (and so to TensorBoard, W&B or trackio) through TRL's ``log_metric``, and the
main process appends one line per watched step to ``<run>/watch.jsonl``. ``StopOnCollapse`` reads that history
and, when a rule of smart.py's STOP_* constants holds, stops the run the way Ctrl-C does (a checkpoint, the reason
printed and kept in ``<run>/stopped.json``, ``--RESUME`` continues without the rule that fired).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from smart_utils import features
from smart_utils.ranks import gather_in_rank_order
from smart_utils.records import Record
from smart_utils.stop_on_signal import any_rank

WATCH_FILE = "watch.jsonl"
STOPPED_FILE = "stopped.json"
DIVERSITY = "watch/diversity"
GROUP_DIVERSITY = "watch/group_diversity"
TRAINED = "reward"  # the history's key for the step's mean trained reward


def group_mean_distance(descriptors: Sequence[np.ndarray | None], size: int) -> tuple[float, float]:
    """Mean pairwise style distance of a batch overall and within its consecutive groups of ``size`` (TRL's GRPO
    groups), note-less pieces left out (NaN where fewer than two pieces have notes)."""

    def mean_distance(group: Sequence[np.ndarray | None]) -> float:
        present = [d for d in group if d is not None]
        if len(present) < 2:
            return math.nan
        return float(features.summed_distances(present).sum() / (len(present) * (len(present) - 1)))

    within = [mean_distance(descriptors[start : start + size]) for start in range(0, len(descriptors), size)]
    finite = [value for value in within if math.isfinite(value)]
    return mean_distance(descriptors), float(np.mean(finite)) if finite else math.nan


def mean_reward(records: Sequence[Record], name: str) -> float:
    """The mean of reward ``name`` over the records that have a finite value of it (NaN when none has)."""
    values = [r["normalized_rewards"].get(name) for r in records]
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


class Watch:
    """Measure a batch without touching its rewards: ``processors`` (built like the reward chain's: judges, a
    held-out-soundfont re-scoring) run on copies, and the diversity of the batch is computed over all ranks.

    ``trained`` names the optimised rewards, which the trainer logs already; the watch logs everything else its
    processors write, and each of ``judges`` that the chain itself already wrote (CU when CE is trained: Audiobox
    scores all four axes at once, so it is not run twice). ``history`` holds one dict per watched step (with the
    step's mean trained reward), read by the stop rules; ``history_file`` (main process only) keeps it on disk,
    and a resumed run (``resumed_before``: its first step) reads back the steps before it.
    """

    def __init__(self, processors: Sequence[Callable[[list[Record]], list[Record]]], trained: Sequence[str],
                 judges: Sequence[str], num_generations: int, interval: int = 1, diversity: bool = True,
                 history_file: Path | None = None, resumed_before: int | None = None):
        if interval < 1:
            raise ValueError(f"interval={interval!r}: watch every >= 1 reward steps")
        self.processors, self.trained, self.judges = list(processors), set(trained), list(judges)
        self.num_generations, self.interval, self.diversity = num_generations, interval, diversity
        self.history_file = history_file
        self.history: list[dict[str, float]] = []
        if history_file is not None and resumed_before is not None and history_file.is_file():
            past = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()]
            self.history = [entry for entry in past if entry["step"] < resumed_before]
            history_file.write_text("".join(json.dumps(entry) + "\n" for entry in self.history))

    def __call__(self, records: list[Record], step: int, trained_reward: float) -> dict[str, float]:
        """The watch's values for reward step ``step`` (empty between watched steps)."""
        if step % self.interval:
            return {}
        values = {f"watch/{name}": mean_reward(records, name) for name in self.judges
                  if any(name in r["normalized_rewards"] for r in records)}
        if self.processors:
            copies = [Record(**{**record, "normalized_rewards": {}, "errors": []}) for record in records]
            for processor in self.processors:
                copies = processor(copies)
            names = sorted({name for copy in copies for name in copy["normalized_rewards"]} - self.trained)
            values.update({f"watch/{name}": mean_reward(copies, name) for name in names})
        if self.diversity:
            batch, _ = gather_in_rank_order([features.style_descriptor(r["sm"]) for r in records])
            overall, within = group_mean_distance(batch, self.num_generations)
            values.update({DIVERSITY: overall, GROUP_DIVERSITY: within})
        self.history.append({"step": step, TRAINED: trained_reward, **values})
        if self.history_file is not None:
            with self.history_file.open("a") as handle:
                handle.write(json.dumps(self.history[-1]) + "\n")
        return {name: value for name, value in values.items() if math.isfinite(value)}


@dataclass(frozen=True)
class StopRules:
    """When over-optimisation stops a run (smart.py's STOP_* constants; None disables a rule).

    ``diversity_fraction``: the batch's diversity fell below this fraction of its mean over the first
    ``baseline_steps`` watched steps. ``judge_steps``: over the last this many watched steps the trained reward's
    least-squares trend rose while a held-out judge's (a ``watch/`` value other than diversity) fell: the policy
    is gaining on the reward in a way the judges do not share.
    """

    diversity_fraction: float | None = None
    judge_steps: int | None = None
    baseline_steps: int = 5

    def active(self) -> bool:
        return self.diversity_fraction is not None or self.judge_steps is not None


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against their positions."""
    x = np.arange(len(values), dtype=float)
    return float(np.polyfit(x, np.asarray(values, dtype=float), 1)[0])


def diversity_collapse(history: Sequence[dict[str, float]], rules: StopRules) -> str | None:
    """Why the diversity rule fires on ``history``, or None."""
    values = [h[DIVERSITY] for h in history if math.isfinite(h.get(DIVERSITY, math.nan))]
    if rules.diversity_fraction is None or len(values) <= rules.baseline_steps:
        return None
    baseline = float(np.mean(values[: rules.baseline_steps]))
    if values[-1] < rules.diversity_fraction * baseline:
        return (f"diversity {values[-1]:.3f} fell below {rules.diversity_fraction} x its level over the first "
                f"{rules.baseline_steps} watched steps ({baseline:.3f})")
    return None


def judge_divergence(history: Sequence[dict[str, float]], rules: StopRules) -> str | None:
    """Why the judge rule fires on ``history``, or None."""
    k = rules.judge_steps
    if k is None or len(history) < max(k, 2):
        return None
    recent = history[-k:]
    if slope([h[TRAINED] for h in recent]) <= 0:
        return None
    judges = sorted({name for h in recent for name in h} - {"step", TRAINED, DIVERSITY, GROUP_DIVERSITY})
    for judge in judges:
        series = [h.get(judge, math.nan) for h in recent]
        if all(math.isfinite(v) for v in series) and slope(series) < 0:
            return f"{judge} fell over the last {k} watched steps while the trained reward rose"
    return None


RULES: dict[str, Callable[[Sequence[dict[str, float]], StopRules], str | None]] = {
    "diversity": diversity_collapse, "judge": judge_divergence,
}


def fired_rules(run_dir: Path) -> list[str]:
    """The rules that stopped this run before (a resumed run continues without them)."""
    path = run_dir / STOPPED_FILE
    return json.loads(path.read_text()).get("rules", []) if path.is_file() else []


class StopOnCollapse(TrainerCallback):
    """Stop the run, with a checkpoint, when a stop rule holds on the watch's history; every rank stops after the
    same step (``any_rank``), as with Ctrl-C. The reason is printed and written to ``<run>/stopped.json``."""

    def __init__(self, watch: Watch, rules: StopRules, run_dir: Path, is_main_process: bool):
        self.watch, self.rules, self.run_dir, self.is_main_process = watch, rules, run_dir, is_main_process
        self.disarmed = fired_rules(run_dir)
        if self.disarmed:
            print(f"[smart] resuming without the stop rule(s) {self.disarmed} that stopped this run before")
        self.seen = len(watch.history)
        self.stopped: str | None = None  # why it stopped the run, once it has

    def reason(self) -> tuple[str, str] | None:
        """The first rule that holds, and why; checked once per new watched step."""
        if len(self.watch.history) == self.seen:
            return None
        self.seen = len(self.watch.history)
        for name, rule in RULES.items():
            why = None if name in self.disarmed else rule(self.watch.history, self.rules)
            if why is not None:
                return name, why
        return None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        found = self.reason()
        if any_rank(found is not None, None if args is None else args.device):
            rule, why = found or ("another rank's", "a stop rule held on another rank")
            print(f"\n[smart] over-optimisation: {why}; saving a checkpoint and stopping at step {state.global_step}")
            if self.is_main_process:
                (self.run_dir / STOPPED_FILE).write_text(json.dumps(
                    {"step": state.global_step, "reason": why, "rules": [*self.disarmed, rule]}, indent=1))
            self.stopped = why
            control.should_save = True
            control.should_training_stop = True
        return control

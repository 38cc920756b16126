"""Clips to the experiment trackers: every audio step, a few of the step's clips go to TensorBoard, W&B or trackio,
so a researcher can hear what the policy writes (a collapse sounds like one), not only read its numbers.

The numbers reach the trackers through TRL's log; audio has no such path, so ``TrackerAudio`` finds the trackers'
own callbacks in the trainer (transformers creates them for REPORT_TO) and logs through their clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

TAG = "audio"  # the k-th clip of every audio step is logged as audio/clip_<k>: one slider per clip in the trackers


class TrackerAudio:
    """``on_audio_step(step, clips)`` for RewardManager: the first ``clips_per_step`` clips (name, (channels,
    samples) audio, sample rate) go to every tracker of ``trainer`` (set with ``attach`` once the trainer exists),
    as mono at the trainer's global step, the clip's name (its reward and index) as the caption where the tracker
    takes one. Trackers other than TensorBoard, W&B and trackio are left alone."""

    def __init__(self, clips_per_step: int = 4):
        self.clips_per_step = clips_per_step
        self.trainer: Any = None

    def attach(self, trainer: Any) -> None:
        self.trainer = trainer

    def __call__(self, step: int, clips: Sequence[tuple[str, np.ndarray, int]]) -> None:
        if self.trainer is None or not self.trainer.is_world_process_zero():
            return
        global_step = self.trainer.state.global_step
        chosen = [(f"{TAG}/clip_{k}", name, np.asarray(audio, dtype=np.float32).mean(axis=0), rate)
                  for k, (name, audio, rate) in enumerate(clips[: self.clips_per_step])]
        for callback in self.trainer.callback_handler.callbacks:
            kind = type(callback).__name__
            try:
                if kind == "TensorBoardCallback" and getattr(callback, "tb_writer", None) is not None:
                    for tag, _, mono, rate in chosen:
                        callback.tb_writer.add_audio(tag, torch.from_numpy(mono)[None], global_step, sample_rate=rate)
                    callback.tb_writer.flush()
                elif kind == "WandbCallback" and getattr(callback, "_wandb", None) is not None:
                    wandb = callback._wandb
                    wandb.log({tag: wandb.Audio(mono, sample_rate=rate, caption=name)
                               for tag, name, mono, rate in chosen}, commit=False)
                elif kind == "TrackioCallback" and getattr(callback, "_trackio", None) is not None:
                    trackio = callback._trackio
                    trackio.log({tag: trackio.Audio(mono, sample_rate=rate, caption=name)
                                 for tag, name, mono, rate in chosen})
            except Exception as error:  # a tracker's hiccup must not stop training
                print(f"[smart] could not log audio to {kind}: {type(error).__name__}: {error}", flush=True)

"""The batched Audiobox path gives audiobox_aesthetics' predictor scores, with one model forward per batch.

Audiobox costs ~2-3 s per 10 s window on this CPU, so these tests use few clips and one torch thread.
"""

import numpy as np
import pytest
import torch

import smart
from processors import AudioBoxAesRewardProcessor, TinySoundfontSynthProcessor
from scores import make_score
from smart_utils.features import AES_AXES, score_seconds

SAMPLE_RATE = smart.SAMPLE_RATE


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def processor(audiobox_checkpoint):
    return AudioBoxAesRewardProcessor(str(audiobox_checkpoint))


@pytest.fixture(scope="module")
def music(soundfont):
    """20 beats at 120 qpm (10.25 s): rendered to 10 s, and to 10.25 s (two predictor windows)."""
    score = make_score([(b / 2, 1, 50 + b % 30, 90) for b in range(40)])
    ten = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, 10).render(score, score_seconds(score))
    longer = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, 11).render(score, score_seconds(score))
    assert ten.shape == (2, 480000) and longer.shape == (2, 492000)
    return ten, longer


def batch_size_recorder(processor):
    sizes = []
    model = processor.scorer.predictor.model
    hook = model.register_forward_hook(lambda module, args, out: sizes.append(args[0]["wav"].shape[0]))
    return sizes, hook


def test_batched_scores_equal_the_reference_predictor(audiobox_checkpoint, processor, music):
    """A full clip, a short clip of odd length (2 s + 1 sample) and a silent 1 s clip, in one forward."""
    from audiobox_aesthetics.infer import initialize_predictor

    clips = [music[0], music[0][:, : 2 * SAMPLE_RATE + 1].copy(), np.zeros((2, SAMPLE_RATE), dtype=np.float32)]
    reference = initialize_predictor(ckpt=str(audiobox_checkpoint))
    expected = reference.forward([{"path": torch.tensor(a), "sample_rate": SAMPLE_RATE} for a in clips])

    sizes, hook = batch_size_recorder(processor)
    records = processor([{"audio": a, "sample_rate": SAMPLE_RATE, "normalized_rewards": {}} for a in clips])
    hook.remove()
    assert sizes == [3]
    assert max(abs(r["aes_scores"][axis] - e[axis]) for r, e in zip(records, expected) for axis in AES_AXES) <= 1e-4
    for record, row in zip(records, expected):
        for axis in AES_AXES:
            assert record["normalized_rewards"][axis] == pytest.approx(row[axis] / 10, abs=1e-5)
    ce = [r["aes_scores"]["CE"] for r in records]
    assert np.isfinite(ce).all() and len({round(v, 3) for v in ce}) == 3  # the clips really score differently


def test_clips_longer_than_one_window_go_through_the_reference_predictor(processor, music, monkeypatch):
    """The predictor weights a long clip's windows itself; the other clips still share one batched forward."""
    passed = []

    def reference(batch):
        passed.extend(item["path"].shape[1] for item in batch)
        return [dict.fromkeys(AES_AXES, 7.0) for _ in batch]

    monkeypatch.setattr(processor.scorer.predictor, "forward", reference)
    sizes, hook = batch_size_recorder(processor)
    silence = np.zeros((2, SAMPLE_RATE), dtype=np.float32)
    records = processor([{"audio": a, "sample_rate": SAMPLE_RATE, "normalized_rewards": {}}
                         for a in (silence, music[1])])
    hook.remove()
    assert passed == [492000] and sizes == [1]
    assert records[1]["aes_scores"] == dict.fromkeys(AES_AXES, 7.0)
    assert records[0]["aes_scores"]["CE"] != 7.0

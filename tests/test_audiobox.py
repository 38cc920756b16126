"""smart_utils/audiobox.py, the Audiobox Aesthetics scorer behind AudioBoxAesRewardProcessor: the batched path gives
audiobox_aesthetics' predictor scores with one model forward per batch, in chunks that fit the GPU's free memory and
in full fp32 whatever TF32 setting is on; the hub's weights must fit the model, and a checkpoint is read weights-only
so a tampered one runs no code.

Audiobox costs ~2-3 s per 10 s window on this CPU, so these tests use few clips and one torch thread.
"""

import pickle

import numpy as np
import pytest
import torch

import smart
from processors import AudioBoxAesRewardProcessor, TinySoundfontSynthProcessor
from scores import make_score
from smart_utils import audiobox as audiobox_module
from smart_utils.audiobox import AUDIOBOX_BYTES_PER_CLIP, check_weight_names, load_aes_predictor
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


# --- the batched path: the reference predictor's scores, one forward per batch ----------------------------------------
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


# --- chunks that fit the GPU, in full fp32 ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audiobox(audiobox_checkpoint):
    """The processor on an explicit CPU device (the file's one_thread fixture holds torch to one thread)."""
    return AudioBoxAesRewardProcessor(str(audiobox_checkpoint), device=torch.device("cpu"))


def test_chunked_scores_equal_unchunked_and_run_without_tf32(audiobox, monkeypatch, tf32_on):
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal((2, int(SAMPLE_RATE * s))) * 0.3).astype(np.float32) for s in (1.0, 0.5, 2.0)]
    forwards = []

    def record(module, args):
        forwards.append((args[0]["wav"].shape[0], torch.backends.cudnn.conv.fp32_precision,
                         torch.backends.cuda.matmul.fp32_precision))

    scorer = audiobox.scorer
    hook = scorer.predictor.model.register_forward_pre_hook(record)
    try:
        monkeypatch.setattr(scorer, "batch_size", None)
        whole = scorer.batched_scores(clips, SAMPLE_RATE)
        monkeypatch.setattr(scorer, "batch_size", 2)
        chunked = scorer.batched_scores(clips, SAMPLE_RATE)
    finally:
        hook.remove()
    assert [size for size, _, _ in forwards] == [3, 2, 1]
    assert {tuple(flags) for _, *flags in forwards} == {("ieee", "ieee")}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # restored after scoring
    assert np.abs(chunked - whole).max() <= 1e-5 and len({round(float(v), 3) for v in whole[:, 0]}) == 3


def test_clips_per_forward_comes_from_the_constant_or_the_free_gpu_memory(audiobox, monkeypatch):
    scorer = audiobox.scorer
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * AUDIOBOX_BYTES_PER_CLIP, 80 * 2**30))
    monkeypatch.setattr(scorer, "batch_size", None)
    assert scorer.clips_per_forward(gpu) == 5  # half the free memory
    assert scorer.clips_per_forward(torch.device("cpu")) is None  # all at once, as before
    monkeypatch.setattr(scorer, "batch_size", 16)
    assert scorer.clips_per_forward(gpu) == 16
    with pytest.raises(ValueError, match="batch_size=0"):
        AudioBoxAesRewardProcessor(audiobox_batch_size=0)


# --- the weights: checked names, weights-only loading -----------------------------------------------------------------
def test_hub_weights_whose_names_do_not_fit_the_model_are_refused(monkeypatch, audiobox_checkpoint):
    from audiobox_aesthetics.model.aes import AesMultiOutput

    from bench.standins import AUDIOBOX_CONFIG

    layer = torch.nn.Linear(2, 2)
    check_weight_names(layer, {"weight", "bias"}, "a file")
    with pytest.raises(ValueError, match=r"1 model weights missing from the file \['bias'\], 1 weights in the file "
                                         r"unused \['bias_renamed'\]"):
        check_weight_names(layer, {"weight", "bias_renamed"}, "a file")

    saved = torch.load(audiobox_checkpoint, weights_only=True)
    model = AesMultiOutput(**AUDIOBOX_CONFIG, target_transform=saved["target_transform"])
    names = set(model.state_dict())
    monkeypatch.setattr(AesMultiOutput, "from_pretrained", classmethod(lambda cls, repo_id: model))
    monkeypatch.setattr(audiobox_module, "hub_weight_names", lambda repo_id: names - {"proj_layer.CE.0.weight"} | {"x"})
    with pytest.raises(ValueError, match="the hub \\(facebook/audiobox-aesthetics\\) do not fit"):
        load_aes_predictor(None, torch.device("cpu"))
    monkeypatch.setattr(audiobox_module, "hub_weight_names", lambda repo_id: names)
    assert load_aes_predictor(None, torch.device("cpu")).model is model


class CodeOnLoad:
    """Unpickling this creates ``path``: what a tampered checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_audiobox_checkpoint_is_read_weights_only_whatever_torchs_default(monkeypatch, audiobox_checkpoint):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's weights-only default no longer protects
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    processor = AudioBoxAesRewardProcessor(str(audiobox_checkpoint))
    assert calls == [True]
    assert not processor.scorer.predictor.model.training


def test_a_tampered_audiobox_checkpoint_is_refused_without_running_its_code(monkeypatch, tmp_path):
    from audiobox_aesthetics.infer import initialize_predictor

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {}, "model_cfg": CodeOnLoad(marker), "target_transform": {}}, checkpoint)

    with pytest.raises(pickle.UnpicklingError):
        AudioBoxAesRewardProcessor(str(checkpoint))
    assert not marker.exists()

    with pytest.raises(TypeError):  # the package's own loader runs the payload, then fails on what it returned
        initialize_predictor(ckpt=str(checkpoint))
    assert marker.exists()

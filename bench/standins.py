"""Same-architecture stand-ins for the downloads the real run needs, built locally with random weights.

The benchmarks (``make gpu-check`` runs the paper's path on them) and the tests (tests/conftest.py) share them;
they live here so that the tests import from bench/ and bench/ never imports from the tests.

- ``make_tiny_policy``: a small random Phi-3 with the project's REMI tokenizer, saved like the hub model.
- ``make_tiny_multitrack_policy``: the same with the multi-track REMI tokenizer (Program tokens, one stream).
- ``make_audiobox_checkpoint``: a random-weight Audiobox Aesthetics ``checkpoint.pt`` in the format
  ``audiobox_aesthetics.infer.initialize_predictor(ckpt=...)`` loads (tensors only). Its head is perturbed so
  that scores differ between clips (an untouched random model scores every clip the same).
- ``make_hub_audiobox``: the same model as ``AesMultiOutput.save_pretrained`` writes the hub repo.
- ``put_in_hf_cache``: a saved folder placed in a Hugging Face hub cache under a repo id, in the layout a download
  leaves (blobs, snapshots/<commit>, refs/main), so the real hub-loading code runs offline (``HF_HUB_OFFLINE=1``).
- ``fill_paper_hub_cache``: stand-ins for both hub repos smart.py's defaults load.
- ``make_tiny_clap``: a small random-weight CLAP model with its processor (the real feature extractor settings,
  a byte-level BPE tokenizer trained here on a few sentences), saved as the laion hub repos hold theirs.
- ``fill_clap_hub_cache``: that stand-in under laion/larger_clap_music and laion/larger_clap_general.
- ``make_listeners_model``: a ``listeners`` reward model as ``listen.py fit`` saves it, with made-up coefficients.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import miditok
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from smart_utils.tokenizer import bridge_tokenizer, default_remi, multitrack_remi

AUDIOBOX_CONFIG = dict(
    proj_num_layer=1, proj_ln=False, proj_act_fn="gelu", proj_dropout=0.0, nth_layer=13,
    use_weighted_layer_sum=True, precision="32", normalize_embed=True, output_dim=1,
)


PAPER_POLICY_SIZE = dict(hidden_size=512, layers=4, heads=8, ffn_multiple=4)  # metamidipianophi3_4L (docs/paper.md)


def make_tiny_policy(
    directory: Path, hidden_size: int = 32, layers: int = 1, heads: int = 2, ffn_multiple: int = 2, seed: int = 0,
    remi: miditok.MusicTokenizer | None = None,
) -> Path:
    """A random Phi-3 causal LM over ``remi``'s vocabulary (default: the project's piano REMI), with miditok's
    tokenizer.json beside it; ``**PAPER_POLICY_SIZE`` gives the paper's 4-layer, 512-wide model (~17M parameters)."""
    torch.manual_seed(seed)
    remi = default_remi() if remi is None else remi
    config = Phi3Config(
        vocab_size=len(remi), hidden_size=hidden_size, intermediate_size=ffn_multiple * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        pad_token_id=remi.vocab["PAD_None"], bos_token_id=remi.vocab["BOS_None"], eos_token_id=remi.vocab["EOS_None"],
    )
    Phi3ForCausalLM(config).save_pretrained(directory)
    bridge_tokenizer(remi).save_pretrained(directory)
    return directory


def make_tiny_multitrack_policy(directory: Path, **policy_size: int) -> Path:
    """``make_tiny_policy`` over the multi-track REMI vocabulary (``midi_tokenizer.multitrack_remi``), so that
    smart.py runs with IS_MULTITRACK and the program rewards offline."""
    return make_tiny_policy(directory, remi=multitrack_remi(), **policy_size)


def random_audiobox(seed: int = 0):
    """A full-size random Audiobox Aesthetics model whose scores differ between clips."""
    from audiobox_aesthetics.infer import AXES_NAME
    from audiobox_aesthetics.model.aes import AesMultiOutput

    torch.manual_seed(seed)
    model = AesMultiOutput(**AUDIOBOX_CONFIG, target_transform={axis: {"mean": 5.5, "std": 1.5} for axis in AXES_NAME})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("proj_layer"):
                parameter.mul_(50.0)
    return model


def make_audiobox_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight Audiobox Aesthetics checkpoint.pt that loads with no network."""
    model = random_audiobox(seed)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "model_cfg": AUDIOBOX_CONFIG, "target_transform": model.target_transform}, path)
    return path


def make_hub_audiobox(directory: Path, seed: int = 0) -> Path:
    """The random model saved as the hub repo facebook/audiobox-aesthetics holds it (config.json, safetensors)."""
    random_audiobox(seed).save_pretrained(directory)
    return directory


def put_in_hf_cache(repo_id: str, folder: Path, hub_cache: Path) -> str:
    """Place a saved folder in a hub cache as ``repo_id``'s main revision; return the (made-up) commit hash.

    The layout is the one huggingface_hub writes: file contents under ``blobs/<hash>``, the revision's tree as
    links in ``snapshots/<commit>/``, and ``refs/main`` naming the commit.
    """
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    files = sorted(path for path in Path(folder).rglob("*") if path.is_file())
    hashes = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    commit = hashlib.sha1("".join(hashes.values()).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path, digest in hashes.items():
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(path.read_bytes())
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


POLICY_HUB_ID = "lucacasini/metamidipianophi3_4L"
AUDIOBOX_HUB_ID = "facebook/audiobox-aesthetics"


def fill_paper_hub_cache(hf_home: Path, workdir: Path, **policy_size: int) -> dict[str, str]:
    """Stand-ins for smart.py's two hub defaults in ``hf_home/hub``: repo id -> commit. ``policy_size`` goes to
    ``make_tiny_policy`` (hidden_size, layers, ...)."""
    policy = make_tiny_policy(workdir / "policy", **policy_size)
    audiobox = make_hub_audiobox(workdir / "audiobox")
    hub_cache = hf_home / "hub"
    return {POLICY_HUB_ID: put_in_hf_cache(POLICY_HUB_ID, policy, hub_cache),
            AUDIOBOX_HUB_ID: put_in_hf_cache(AUDIOBOX_HUB_ID, audiobox, hub_cache)}


CLAP_HUB_IDS = ("laion/larger_clap_music", "laion/larger_clap_general")  # the CLAP rewards' defaults
CLAP_TOKENIZER_TEXTS = ("jazz", "a calm piano piece", "beautiful, high quality, amazing music", "dissonant glitch")


def clap_tokenizer():
    """A RoBERTa tokenizer (CLAP's text side) over a byte-level BPE trained on a few sentences: any text encodes,
    and the special tokens have RoBERTa's ids (<pad> = 1, CLAP's padding index)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CLAP_TOKENIZER_TEXTS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                model_max_length=512)


def make_tiny_clap(directory: Path, seed: int = 0, audio_config: dict | None = None) -> Path:
    """A ~30k-parameter random ClapModel (1 text layer, 2 small HTSAT stages, unfused) with a ClapProcessor whose
    feature extractor is the default one (48 kHz, 10 s, 64 mel bins), so clips take the real input path.
    ``audio_config`` replaces the audio encoder's sizes (bench/reward_costs.py times a full-size one)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(seed)
    tokenizer = clap_tokenizer()
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=514),
        audio_config=audio_config or dict(depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=8,
                                          hidden_size=16, projection_hidden_size=32, enable_fusion=False),
        projection_dim=16,
    )
    ClapModel(config).save_pretrained(directory)
    extractor = ClapFeatureExtractor(truncation="rand_trunc")  # unfused model: one mel per clip
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def fill_clap_hub_cache(hub_cache: Path, workdir: Path) -> dict[str, str]:
    """The CLAP stand-in in ``hub_cache`` under both laion hub ids: repo id -> commit."""
    clap = make_tiny_clap(workdir / "clap")
    return {repo_id: put_in_hf_cache(repo_id, clap, hub_cache) for repo_id in CLAP_HUB_IDS}


def make_listeners_model(directory: Path, features: tuple[str, ...] | None = None) -> Path:
    """A reward model as ``listen.py fit`` saves it (listening/fit.py), fitted on no ratings: made-up coefficients
    over ``features`` (default: every feature a fit may use, the paper's MIDI features, the weight-free rewards and
    Audiobox's axes), marked reliable. It costs what a fitted model on those features costs, and predicts nothing."""
    from listening.fit import Counts, CrossValidation, RewardModel, save_model
    from processors import STANDALONE_REWARDS
    from smart_utils.features import AES_AXES, FEATURES

    if features is None:
        features = (*FEATURES, *(f"reward_{name}" for name in STANDALONE_REWARDS), *AES_AXES)
    count = len(features)
    model = RewardModel(
        features=tuple(features), means=(0.0,) * count, scales=(1.0,) * count,
        coefficients=tuple(0.01 * (k + 1) for k in range(count)), intercept=5.5, alpha=1.0, reliable=True,
        reasons=(), notes=("a stand-in (bench/standins.py): made-up coefficients, fitted on no ratings",),
        cross_validation=CrossValidation(spearman=0.0, rmse=1.0, baseline_rmse=1.0, baseline_spearman=0.0,
                                         permutation_p=1.0, permutations=0, folds=0, fold_alphas=()),
        counts=Counts(ratings=0, participants=0, clips=0, prompts=0, clips_left_out=0),
    )
    return save_model(model, directory)

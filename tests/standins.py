"""Same-architecture stand-ins for the downloads the real run needs, built locally with random weights.

- ``make_tiny_policy``: a small random Phi-3 with the project's REMI tokenizer, saved like the hub model.
- ``make_audiobox_checkpoint``: a random-weight Audiobox Aesthetics ``checkpoint.pt`` in the format
  ``audiobox_aesthetics.infer.initialize_predictor(ckpt=...)`` loads (stack.md §C). Its head is perturbed so
  that scores differ between clips (an untouched random model scores every clip the same).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from midi_tokenizer import bridge_tokenizer, default_remi

AUDIOBOX_CONFIG = dict(
    proj_num_layer=1, proj_ln=False, proj_act_fn="gelu", proj_dropout=0.0, nth_layer=13,
    use_weighted_layer_sum=True, precision="32", normalize_embed=True, output_dim=1,
)


def make_tiny_policy(directory: Path, hidden_size: int = 32, layers: int = 1, seed: int = 0) -> Path:
    """A random Phi-3 causal LM over the project's vocabulary, with miditok's tokenizer.json beside it."""
    torch.manual_seed(seed)
    remi = default_remi()
    config = Phi3Config(
        vocab_size=len(remi), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=remi.vocab["PAD_None"], bos_token_id=remi.vocab["BOS_None"], eos_token_id=remi.vocab["EOS_None"],
    )
    Phi3ForCausalLM(config).save_pretrained(directory)
    bridge_tokenizer(remi).save_pretrained(directory)
    return directory


def make_audiobox_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight Audiobox Aesthetics checkpoint.pt that loads with no network."""
    from audiobox_aesthetics.infer import AXES_NAME
    from audiobox_aesthetics.model.aes import AesMultiOutput

    torch.manual_seed(seed)
    target_transform = {axis: {"mean": 5.5, "std": 1.5} for axis in AXES_NAME}
    model = AesMultiOutput(**AUDIOBOX_CONFIG, target_transform=target_transform)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("proj_layer"):
                parameter.mul_(50.0)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "model_cfg": AUDIOBOX_CONFIG, "target_transform": target_transform}, path)
    return path

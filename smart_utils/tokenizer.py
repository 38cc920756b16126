"""The project's REMI tokenizer and the bridge that lets TRL treat it as a HuggingFace tokenizer.

Two tokenizers describe the same vocabulary:
- the miditok REMI tokenizer turns token ids into MIDI (``symusic.Score``) and back;
- ``MidiTokBridge`` is a ``PreTrainedTokenizerFast`` with a word-level vocabulary copied from miditok, so that
  TRL 1.16 (which refuses anything that is not a ``PreTrainedTokenizerBase``) can encode prompt strings such as
  ``"Bar_None TimeSig_4/4 Position_0 Tempo_120.0"`` into exactly the miditok ids, and decode completions.

A model directory holds miditok's own ``tokenizer.json`` (the layout of the paper's hub checkpoint), and the
bridge is rebuilt from it on load; ``MidiTokBridge.save_pretrained`` writes that same file, so every training
checkpoint can be used wherever the base model can.
"""

from __future__ import annotations

import os
from pathlib import Path

import miditok
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

MIDITOK_FILE = "tokenizer.json"

# The paper's base-model vocabulary (docs/paper.md): 413 tokens = PAD/BOS/EOS, PRE/SUF, INF1-16, Bar,
# 88 Pitch (21-108), 32 Velocity, 48 Duration (12 ticks/beat up to 4 beats), 144 Position, 64 Tempo (40-250),
# 15 TimeSig. This config reproduces that layout token for token (ids may be ordered differently).
_TIME_SIGNATURES = {8: [3, 5, 6, 7, 9, 10, 11, 12], 4: [2, 3, 4, 5, 6], 2: [2, 3]}
_SPECIAL_TOKENS = ["PAD", "BOS", "EOS", "PRE", "SUF"] + [f"INF{i}" for i in range(1, 17)]


def _remi(use_programs: bool) -> miditok.REMI:
    """The project's REMI layout, with or without Program tokens (everything else is the paper's)."""
    config = miditok.TokenizerConfig(
        pitch_range=(21, 108),
        beat_res={(0, 4): 12},
        num_velocities=32,
        special_tokens=_SPECIAL_TOKENS,
        use_velocities=True,
        use_tempos=True,
        num_tempos=64,
        tempo_range=(40, 250),
        use_time_signatures=True,
        time_signature_range=_TIME_SIGNATURES,
        use_programs=use_programs,
        one_token_stream_for_programs=True,
        use_pitchdrum_tokens=False,
    )
    return miditok.REMI(config)


def default_remi() -> miditok.REMI:
    """Build the project's REMI tokenizer offline (the same layout as the paper's 413-token vocabulary)."""
    return _remi(use_programs=False)


def multitrack_remi() -> miditok.REMI:
    """The same REMI layout for several instruments: a ``Program_*`` token (0-127, -1 for drums) before each
    note, all tracks in one token stream (miditok's ``one_token_stream_for_programs``), so that a causal LM writes
    a whole arrangement as one sequence and decoding gives one track per program. 542 tokens."""
    return _remi(use_programs=True)


def writes_tracks_in_one_stream(remi: miditok.MusicTokenizer) -> bool:
    """Whether a tokenizer writes several tracks in one stream (Program tokens, ``one_token_stream``): its ids
    then decode as a 1-D sequence, where a single-track tokenizer takes (tracks, tokens), i.e. the original's
    ``is_multitrack`` switch of ``MidiTokToSymusicProcessor``. Multi-stream program tokenizers (one sequence per
    track) cannot be the output of one causal LM, so they count as not multi-track."""
    return bool(remi.config.use_programs and remi.one_token_stream)


def load_remi(path_or_hub_id: str) -> miditok.MusicTokenizer:
    """Load the miditok tokenizer stored with a model: a local directory, or a hub id (needs a network)."""
    local_file = Path(path_or_hub_id) / MIDITOK_FILE
    if local_file.is_file():
        return miditok.REMI(params=local_file)
    return miditok.REMI.from_pretrained(path_or_hub_id)


class MidiTokBridge(PreTrainedTokenizerFast):
    """A word-level HF tokenizer whose ids are the miditok ids; saving it writes miditok's tokenizer file."""

    midi_tokenizer: miditok.MusicTokenizer

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> tuple[str, ...]:
        """Write miditok's ``tokenizer.json`` (not HF's), so a checkpoint loads exactly like the base model."""
        os.makedirs(save_directory, exist_ok=True)
        self.midi_tokenizer.save(save_directory)
        return (str(Path(save_directory) / MIDITOK_FILE),)


def bridge_tokenizer(remi: miditok.MusicTokenizer) -> MidiTokBridge:
    """Wrap a miditok tokenizer so that text "TokA TokB" encodes to miditok ids and ids decode to that text."""
    vocab = dict(remi.vocab)
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token="PAD_None"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_level.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins token names with spaces
    bridge = MidiTokBridge(
        tokenizer_object=word_level,
        pad_token="PAD_None",
        bos_token="BOS_None",
        eos_token="EOS_None",
        unk_token="PAD_None",
        padding_side="left",
    )
    bridge.midi_tokenizer = remi
    return bridge


def load_tokenizers(path_or_hub_id: str) -> tuple[miditok.MusicTokenizer, MidiTokBridge]:
    """Load a model's miditok tokenizer and build its HF bridge."""
    remi = load_remi(path_or_hub_id)
    return remi, bridge_tokenizer(remi)

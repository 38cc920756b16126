"""smart_utils/tokenizer.py, the token bridge: HF tokenizer ids must be exactly the miditok ids, through save and
load."""

from smart_utils.tokenizer import MIDITOK_FILE, bridge_tokenizer, default_remi, load_tokenizers


def test_layout_is_the_papers_413_tokens():
    remi = default_remi()
    kinds = [token.split("_")[0] for token in remi.vocab]
    assert len(remi) == 413
    assert {k: kinds.count(k) for k in ("Pitch", "Velocity", "Duration", "Position", "Tempo", "TimeSig")} == {
        "Pitch": 88, "Velocity": 32, "Duration": 48, "Position": 144, "Tempo": 64, "TimeSig": 15,
    }


def test_bridge_encodes_every_token_to_its_miditok_id_and_decodes_back():
    remi = default_remi()
    bridge = bridge_tokenizer(remi)
    names = list(remi.vocab)
    ids = bridge(" ".join(names))["input_ids"]
    assert ids == [remi.vocab[name] for name in names]
    assert bridge.decode(ids).split() == names
    assert (bridge.pad_token_id, bridge.bos_token_id, bridge.eos_token_id) == (
        remi.vocab["PAD_None"], remi.vocab["BOS_None"], remi.vocab["EOS_None"])


def test_saved_bridge_reloads_with_identical_ids(tmp_path):
    remi = default_remi()
    bridge_tokenizer(remi).save_pretrained(tmp_path)
    assert (tmp_path / MIDITOK_FILE).is_file()
    remi2, bridge2 = load_tokenizers(str(tmp_path))
    assert dict(remi2.vocab) == dict(remi.vocab)
    prompt = "Bar_None TimeSig_6/8 Position_0 Tempo_100.0 Pitch_60 Velocity_63 Duration_1.0.12"
    assert bridge2(prompt)["input_ids"] == [remi.vocab[t] for t in prompt.split()]

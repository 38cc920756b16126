"""smart_utils/prompts.py: the four prompt sources."""

import pytest

from scores import make_score
from smart_utils.prompts import build_prompts
from smart_utils.tokenizer import default_remi


@pytest.fixture(scope="module")
def remi():
    return default_remi()


def test_procedural_prompts_have_the_original_layout_and_are_seeded(remi):
    prompts = build_prompts("procedural", remi, 50, seed=3)
    for prompt in prompts:
        tokens = prompt.split()
        kinds = [t.split("_")[0] for t in tokens]
        assert kinds == ["Bar", "TimeSig", "Position", "Tempo", "Pitch", "Velocity", "Duration"]
        assert tokens[2] == "Position_0" and all(t in remi.vocab for t in tokens)
    assert prompts == build_prompts("procedural", remi, 50, seed=3)
    assert len(set(prompts)) > 40 and prompts != build_prompts("procedural", remi, 50, seed=4)


def test_paper_prompts_have_no_starting_note(remi):
    for prompt in build_prompts("procedural-no-starting-note", remi, 10, seed=0):
        assert [t.split("_")[0] for t in prompt.split()] == ["Bar", "TimeSig", "Position", "Tempo"]
    assert build_prompts("no prompt", remi, 3, seed=0) == ["BOS_None"] * 3


def test_dataset_prompts_take_the_first_time_signature_and_tempo(remi, tmp_path):
    score = make_score([(0, 1, 60, 80), (1, 1, 64, 80)], qpm=90)
    score.time_signatures[0] = type(score.time_signatures[0])(0, 3, 4)
    score.dump_midi(str(tmp_path / "a.mid"))
    (tmp_path / "broken.mid").write_bytes(b"not midi")
    prompts = build_prompts("dataset", remi, 4, seed=0, midi_dir=str(tmp_path))
    tokens = prompts[0].split()
    assert tokens[0] == "Bar_None" and tokens[1] == "TimeSig_3/4" and tokens[2] == "Position_0"
    assert tokens[3].startswith("Tempo_") and abs(float(tokens[3].split("_")[1]) - 90) < 3.5
    assert len(prompts) == 4


def test_bad_sources_are_clear_errors(remi, tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        build_prompts("random", remi, 1, seed=0)
    with pytest.raises(ValueError, match="holds no .mid"):
        build_prompts("dataset", remi, 1, seed=0, midi_dir=str(tmp_path))


def write_pieces(folder, tempos):
    for k, qpm in enumerate(tempos):
        make_score([(0, 1, 60 + k, 80)], qpm=qpm).dump_midi(str(folder / f"piece{k}.mid"))


def tempo_of(prompt):
    return float(prompt.split()[3].split("_")[1])


def test_dataset_prompts_are_distinct_pieces_of_a_seeded_shuffle(remi, tmp_path):
    tempos = [40, 70, 100, 130, 160, 190, 220, 250]  # one REMI tempo bin each, so a prompt names its piece
    write_pieces(tmp_path, tempos)
    prompts = build_prompts("dataset", remi, 5, seed=1, midi_dir=str(tmp_path))
    assert len(set(prompts)) == 5  # five different pieces, none drawn twice
    assert prompts == build_prompts("dataset", remi, 5, seed=1, midi_dir=str(tmp_path))
    orders = {tuple(build_prompts("dataset", remi, 8, seed=s, midi_dir=str(tmp_path))) for s in range(5)}
    assert len(orders) > 1 and all(len(set(order)) == 8 for order in orders)  # shuffled, every piece once


def test_dataset_prompts_cycle_through_a_small_folder_and_say_so(remi, tmp_path, capsys):
    write_pieces(tmp_path, [60, 120, 180])
    prompts = build_prompts("dataset", remi, 7, seed=0, midi_dir=str(tmp_path))
    assert len(prompts) == 7 and len(set(prompts)) == 3
    assert prompts[:3] == prompts[3:6] and prompts[6] == prompts[0]
    assert "only 3 pieces give a prompt for 7 prompts" in capsys.readouterr().out


def test_dataset_prompts_read_only_the_pieces_they_need(remi, tmp_path, capsys):
    write_pieces(tmp_path, [60, 120, 180, 240])
    for k in range(4):
        (tmp_path / f"zbroken{k}.mid").write_bytes(b"not midi")
    prompts = build_prompts("dataset", remi, 2, seed=0, midi_dir=str(tmp_path))
    skipped = capsys.readouterr().out.count("skipped")
    assert len(prompts) == 2 and skipped < 4  # stops once 2 pieces gave prompts

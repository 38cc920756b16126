"""group_diversity: each completion's mean style distance to the other completions of its GRPO group."""

import pytest
import symusic
import torch

from configurator import smart_constants
from processors import GroupDiversityRewardProcessor, build_reward_processors, reward_class
from scores import make_score
from smart_utils.records import completion_record

# One-note and two-note pieces whose descriptor distances are easy by hand: descriptor_distance is
# 0.25 * (L1 of the pitch-class shares + L1 of the onset-in-beat shares).
C_ON_BEAT = make_score([(0, 1, 60, 80)])
D_ON_BEAT = make_score([(0, 1, 62, 80)])  # other pitch class: 0.25 * 2 = 0.5 from C_ON_BEAT
C_OFF_BEAT = make_score([(0.5, 1, 60, 80)])  # other onset: 0.5 from C_ON_BEAT, 1.0 from D_ON_BEAT
C_AND_D = make_score([(0, 1, 60, 80), (0, 1, 62, 80)])  # half C, half D: 0.25 from both on-beat notes, 0.75 off
EMPTY = symusic.Score(12)
# Each piece's mean distance to the three others in the group (C_ON_BEAT, D_ON_BEAT, C_OFF_BEAT, C_AND_D).
HAND = [(0.5 + 0.5 + 0.25) / 3, (0.5 + 1.0 + 0.25) / 3, (0.5 + 1.0 + 0.75) / 3, (0.25 + 0.25 + 0.75) / 3]
FOUR = [C_ON_BEAT, D_ON_BEAT, C_OFF_BEAT, C_AND_D]


def batch(groups: list[tuple[int, list[symusic.Score]]]) -> list[dict]:
    """Records as RewardManager makes them, decoded: (prompt token, pieces) per group, groups in batch order."""
    records = []
    for prompt_token, pieces in groups:
        for score in pieces:
            record = completion_record(len(records), f"prompt {prompt_token}", [1, prompt_token], [7, 8, 9])
            record["sm"] = score
            records.append(record)
    return records


def rewards(records: list[dict], num_generations: int) -> list[float]:
    GroupDiversityRewardProcessor(num_generations)(records)
    return [record["normalized_rewards"]["group_diversity"] for record in records]


def test_identical_completions_score_zero():
    records = batch([(5, [C_AND_D] * 8)])
    assert rewards(records, 8) == [0.0] * 8
    assert all(record["errors"] == [] for record in records)


def test_hand_computed_distances_and_groups_do_not_leak():
    """Two groups of 4: the first has the hand-computed values, the second (all alike) zeros; had the batch been
    one group, the alike pieces would differ from the first group's."""
    records = batch([(5, FOUR), (6, [C_ON_BEAT] * 4)])
    assert rewards(records, 4) == pytest.approx(HAND + [0.0] * 4, abs=1e-12)
    assert all(record["errors"] == [] for record in records)

    changed = batch([(5, FOUR), (6, [C_AND_D, EMPTY, D_ON_BEAT, C_OFF_BEAT])])
    assert rewards(changed, 4)[:4] == pytest.approx(HAND, abs=1e-12)


def test_group_mean_is_evaluations_mean_pairwise_distance():
    from smart_utils.features import mean_pairwise_distance

    values = rewards(batch([(5, FOUR)]), 4)
    assert sum(values) / 4 == pytest.approx(mean_pairwise_distance(FOUR), abs=1e-12)


def test_note_less_completions_score_zero_and_add_no_diversity_to_others():
    """An empty piece gets 0 and, as a partner, distance 0: replacing two pieces by empty ones lowers the others'
    rewards (1.25/3 -> 0.5/3 for C_ON_BEAT), so a policy cannot raise its reward by writing nothing."""
    values = rewards(batch([(5, [C_ON_BEAT, D_ON_BEAT, EMPTY, EMPTY])]), 4)
    assert values == pytest.approx([0.5 / 3, 0.5 / 3, 0.0, 0.0], abs=1e-12)
    assert rewards(batch([(5, [EMPTY] * 4)]), 4) == [0.0] * 4


def test_mixed_prompts_fall_back_to_grouping_by_prompt_and_say_so(capsys):
    """Blocks of 4 that mix two prompts (a group split across ranks): grouped by prompt, noted in every record."""
    interleaved = [rec for pair in zip(batch([(5, FOUR)]), batch([(6, [C_ON_BEAT] * 4)])) for rec in pair]
    reward = GroupDiversityRewardProcessor(4)
    reward(interleaved)
    values = [record["normalized_rewards"]["group_diversity"] for record in interleaved]
    assert values[0::2] == pytest.approx(HAND, abs=1e-12) and values[1::2] == [0.0] * 4
    assert all(len(record["errors"]) == 1 and "grouped by identical prompt instead (2 groups)" in record["errors"][0]
               for record in interleaved)
    reward(batch([(5, FOUR[:3])]))  # the console warning comes once per processor
    assert capsys.readouterr().out.count("[group_diversity] warning") == 1


def test_a_batch_that_is_not_a_multiple_of_the_group_size_falls_back():
    """6 records for groups of 4: by prompt, a group of 5 and a group of one, which has no sibling to differ from."""
    records = batch([(5, FOUR + [C_ON_BEAT]), (6, [D_ON_BEAT])])
    values = rewards(records, 4)
    d_on_beat = (0.5 + 1.0 + 0.25 + 0.5) / 4  # its distances to C_ON_BEAT, C_OFF_BEAT, C_AND_D, C_ON_BEAT
    assert values[1] == pytest.approx(d_on_beat, abs=1e-12) and values[5] == 0.0
    assert all("does not split into blocks of 4" in record["errors"][0] for record in records)


def test_same_text_with_other_prompt_ids_is_another_prompt():
    records = batch([(5, FOUR)])
    records[3]["prompt_and_completion"] = [1, 99, 7, 8, 9]
    rewards(records, 4)
    assert all(record["errors"] for record in records)


def test_built_from_smarts_constants_through_build_reward_processors():
    import smart

    config = smart_constants()
    assert reward_class("group_diversity", config) is GroupDiversityRewardProcessor
    (default,) = build_reward_processors(["group_diversity"], config)
    assert default.num_generations == smart.NUM_GENERATIONS == 8
    (processor,) = build_reward_processors(["group_diversity"], {**config, "NUM_GENERATIONS": 4}, torch.device("cpu"))
    assert isinstance(processor, GroupDiversityRewardProcessor) and processor.num_generations == 4
    records = processor(batch([(5, FOUR), (6, FOUR[::-1])]))
    values = [record["normalized_rewards"]["group_diversity"] for record in records]
    assert values == pytest.approx(HAND + HAND[::-1], abs=1e-12)

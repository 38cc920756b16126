"""The original's PAM prompt pairs (erl-j/SMART pam_prompt_pairs.py): smart.py's PAM_PROMPTS default.

PAM (Deshmukh et al. 2024, "PAM: Prompting Audio-Language Models for Audio Quality Assessment") scores a clip by
how much more a CLAP model matches it with a positive description than with its negative twin. Each pair's
``shorthand`` names its reward (``PamRewardProcessor``). Kept in a module of its own, free of heavy imports, so
that smart.py can name the default before anything slow loads.
"""

from __future__ import annotations

from typing import TypedDict


class PromptPair(TypedDict):
    """One PAM axis: the reward name and the two descriptions it contrasts."""

    shorthand: str
    positive: str
    negative: str


PROMPT_PAIRS: tuple[PromptPair, ...] = (
    PromptPair(
        shorthand="glitchless",
        positive="A smooth and continuous texture with seamless transitions and stable audio playback.",
        negative="A glitchy and unstable excerpt with digital artifacts, abrupt cuts, or dropouts.",
    ),
    PromptPair(
        shorthand="expressive",
        positive="A dynamically rich excerpt with emotional phrasing, subtle articulations, and human-like nuance.",
        negative="A flat and mechanical sequence with rigid articulation, even dynamics, and static energy.",
    ),
    PromptPair(
        shorthand="naturalfeel",
        positive="A fluid rhythmic feel with organic timing and slight expressive variations in phrasing.",
        negative="A stiff and quantized rhythm with robotic timing and uniform note placements.",
    ),
    PromptPair(
        shorthand="clarity",
        positive="A clean mix where each instrument is clearly defined and occupies its own space in the spectrum.",
        negative="A muddy and crowded mix where sounds overlap and mask each other.",
    ),
    PromptPair(
        shorthand="interest",
        positive="An engaging texture with subtle variations, rich timbres, and musical detail.",
        negative="A dull sequence with static timbres and repetitive gestures that feel uninspired.",
    ),
    PromptPair(
        shorthand="prosound",
        positive="A polished sound with balanced levels, clean frequency distribution, and professional-grade "
        "production.",
        negative="A rough and uneven mix with harsh tones, poor balance, and lo-fi characteristics.",
    ),
    PromptPair(
        shorthand="intent",
        positive="A focused excerpt with coherent phrasing and purposeful musical gestures.",
        negative="An unfocused sequence with scattered gestures and unclear musical direction.",
    ),
    PromptPair(
        shorthand="groove",
        positive="A tight rhythmic feel with strong pulse, clear subdivisions, and natural momentum.",
        negative="An awkward rhythmic structure with imprecise timing and unstable pulse.",
    ),
    PromptPair(
        shorthand="realism",
        positive="Instruments that sound lifelike and expressive, with detailed articulation and natural tone.",
        negative="Instruments that sound artificial and static, with generic tone and unrealistic behavior.",
    ),
    PromptPair(
        shorthand="variation",
        positive="A rich texture with contrasting articulations, subtle shifts, and sonic variety.",
        negative="A uniform texture with repeated gestures and minimal sonic contrast.",
    ),
)
PAM_AVERAGE = "pam_avg"  # the reward name of the mean over the pairs

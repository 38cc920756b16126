# The offline preset: the whole SMART loop on a laptop-class CPU in about a quarter of an hour, no downloads.
#   python smart.py config/local.py        (or: make local)
# Shipped 4-layer Phi-3 piano model, the paper's 4-token prompts, TinySoundFont with the always-installed
# TimGM6mb soundfont, and weight-free rewards in place of Audiobox (whose ~2.3 s per clip on a CPU would make a
# step take minutes). Add "CE": 1.0 and AUDIOBOX_CHECKPOINT to put Audiobox back.
BASE_MODEL_PATH = "models/piano-tiny"
PROMPT_SOURCE = "procedural-no-starting-note"
SOUNDFONT = "timgm6mb"
REWARD_WEIGHTS = {"audio_activity": 1.0, "note_density": 1.0, "scale_consistency": 1.0}
NUM_TRAIN_STEPS = 120
BATCH_SIZE = 16  # 2 prompts x 8 completions per step
MAX_COMPLETION_LENGTH = 128
LEARNING_RATE = 5e-4  # a 1M-parameter policy moves little at the paper's 1e-4 in 120 steps
SAVE_STEPS = 40
AUDIO_SAVE_INTERVAL = 20
EVAL_SAMPLES = 16

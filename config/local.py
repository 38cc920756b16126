# The offline preset: the whole SMART loop on a laptop-class CPU in minutes, nothing downloaded.
#   python smart.py config/local.py        (or: make local)
# The shipped 4-layer Phi-3 piano model, the paper's 4-token prompts, TinySoundFont with the always-installed
# TimGM6mb soundfont, and weight-free rewards in place of Audiobox (whose ~2.3 s per clip on a CPU would make a
# step take minutes): one on the rendered audio, two on the score. To put Audiobox back, add "CE": 1.0 to
# REWARD_WEIGHTS and set AUDIOBOX_CHECKPOINT.
BASE_MODEL_PATH = "models/piano-tiny"
PROMPT_SOURCE = "procedural-no-starting-note"  # the paper's main setting
SOUNDFONT = "timgm6mb"
REWARD_WEIGHTS = {"audio_activity": 1.0, "note_density": 1.0, "scale_consistency": 1.0}
NUM_TRAIN_STEPS = 200  # the paper's step count
BATCH_SIZE = 16  # 2 prompts x 8 completions per step (the paper: 64)
LEARNING_RATE = 5e-4  # a 1M-parameter policy moves little at the paper's 1e-4
SAVE_STEPS = 50
AUDIO_SAVE_INTERVAL = 20
EVAL_SAMPLES = 16
CPU_THREADS = 1  # on a small CPU one torch thread generates ~10x faster than two oversubscribed ones
RENDER_WORKERS = 1  # 16 short clips render in ~0.2 s in-process; worker processes would only compete for the core

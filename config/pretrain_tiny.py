# The shipped tiny piano model (models/piano-tiny): a 4-layer, ~1.2M-parameter Phi-3 trained on the music21
# corpus built by `python corpus.py`, sized for ~40 minutes on a 2-core CPU.
# Run: python pretrain.py config/pretrain_tiny.py
DATA_DIR = "data/corpus/midi"
OUT_DIR = "models/piano-tiny"
N_LAYER = 4
N_HEAD = 4
N_EMBD = 128
INTERMEDIATE = 512
MAX_POSITIONS = 1024
DROPOUT = 0.1
CROP_TOKENS = 256  # shorter than the paper's 500: SMART completions are 256 tokens and CPU steps are cheaper
TRANSPOSE = 5  # the corpus is small; transposition by up to a fourth multiplies it
BATCH_SIZE = 16
LEARNING_RATE = 2e-3  # a 1M-parameter model tolerates (and needs, in a short run) a higher lr than the paper's 17M
MIN_LR = 1e-4
WARMUP_STEPS = 100
MAX_STEPS = 2200  # ~1.1 s/step on one core: ~40 minutes
MAX_MINUTES = 45.0
EVAL_INTERVAL = 200
EVAL_CROPS = 96
PATIENCE = 3
THREADS = 1  # the shipped model was trained with one thread; on a small CPU more threads only contend

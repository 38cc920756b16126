"""A study folder's layout, in one place: what listen.py build writes and what serve, analyse and fit read.

    <study>/manifest.json           every clip: id, system, prompt, seed, files, the scores the project computed
    <study>/stimuli/<id>.wav        the loudness-matched clips participants hear
    <study>/midi/<id>.mid           the pieces behind them
    <study>/gorilla_spreadsheet.csv the original's hosted-survey layout
    <study>/responses.sqlite        the ratings (listen.py serve)
    <study>/admin_token             the admin page's token
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
STIMULI_DIR = "stimuli"
MIDI_DIR = "midi"
GORILLA_CSV = "gorilla_spreadsheet.csv"
DATABASE = "responses.sqlite"
TOKEN_FILE = "admin_token"


def load_manifest(study_dir: str | Path) -> dict[str, Any]:
    """The manifest of a built study, with clear advice when there is none."""
    path = Path(study_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the study first with "
                                f"python listen.py build base=MODEL tuned=RUN --out {study_dir}")
    return json.loads(path.read_text())

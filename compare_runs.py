"""Print every recorded file, version, device field and constant in which two SMART runs differ.

    python compare_runs.py artefacts/runs/<run a> artefacts/runs/<run b>

Each run folder holds run_record.json (what the run really used) and smart_config.json (its constants).
"""

from __future__ import annotations

import sys
from pathlib import Path

from smart_utils.run_record import RECORD_FILE, differences


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python compare_runs.py RUN_A RUN_B   (prints what differs between two runs)", file=sys.stderr)
        return 2
    missing = [run for run in argv if not (Path(run) / RECORD_FILE).is_file()]
    if missing:
        print(f"no {RECORD_FILE} in {', '.join(missing)} (runs before this record existed have none)", file=sys.stderr)
        return 2
    rows = differences(Path(argv[0]), Path(argv[1]))
    for key, a, b in rows:
        print(f"{key}: {a!r} -> {b!r}")
    if not rows:
        print("the two runs used the same files, versions, device and constants")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

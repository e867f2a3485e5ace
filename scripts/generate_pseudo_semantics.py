"""Generate pseudo semantic labels for a dataset split (one PNG per camera + manifest.json).

    python scripts/generate_pseudo_semantics.py --data-root ROOT --out-dir OUT --backend BACKEND [--checkpoint DIR] ...
    accelerate launch --num_processes N scripts/generate_pseudo_semantics.py ...   # N shards

See selfsup/pseudo/runner.py for what a run does, and --help for the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.training.launch import relaunch_for_cpu_ddp  # noqa: E402

if __name__ == "__main__":
    relaunch_for_cpu_ddp()
    from selfsup.pseudo.runner import main

    sys.exit(main("semantic"))

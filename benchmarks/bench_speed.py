"""Speed and memory of KARST vs PEFT LoRA / LoKr, full fine-tuning, the floor (norms + head) and probe.

    python benchmarks/bench_speed.py --models vit_small_patch16_224 vit_base_patch16_224 --device cpu \
        --out benchmarks/RESULTS.md

Same as ``karst bench``; see :mod:`karst.bench` for what is measured and how.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from karst.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

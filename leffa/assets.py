"""Where the repository's shipped assets live and how their files are named: the demo models
(``assets/demo-model/<task>/``) and the example inputs (``assets/examples/``).

Shared by the app (``leffa.app.demo`` reads them) and ``train/`` (which writes them), so it imports nothing.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEMO_MODEL_DIR = ASSETS_DIR / "demo-model"
EXAMPLES_DIR = ASSETS_DIR / "examples"
#: One demo model per task, each in ``assets/demo-model/<task>/`` with its ``metadata.json`` and check batch.
DEMO_TASKS = ("virtual_tryon", "pose_transfer")
#: (height, width) the demo models were trained at; their examples have this size.
DEMO_IMAGE_SIZE: tuple[int, int] = (128, 96)
#: Parts of a try-on example ``<part>_KK.png``.
EXAMPLE_PARTS = ("person", "garment", "mask", "densepose")
#: Parts of a pose example ``pose_KK_<part>.png``: the person (appearance, pose A), the target photo (pose B)
#: and the target's DensePose (the synthetic grey part render the pose demo model was trained on).
POSE_EXAMPLE_PARTS = ("person", "target", "densepose")


def pose_example_name(index: str, part: str) -> str:
    """File name of one part of pose example ``index`` (e.g. ``"00"``): ``pose_<index>_<part>.png``."""
    if part not in POSE_EXAMPLE_PARTS:
        raise ValueError(f"part must be one of {POSE_EXAMPLE_PARTS}, got {part!r}")
    return f"pose_{index}_{part}.png"

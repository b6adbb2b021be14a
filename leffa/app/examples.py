"""Example inputs the app offers and the command line's tests use: try-on and pose-transfer pairs as files.

The shipped ones (``assets/examples/``) bring their mask and DensePose, since the built-in demo model has no
preprocessing models; the released weights' own examples (``ckpts/examples/``) are photos only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leffa.app.demo import demo_examples, pose_example_indices
from leffa.assets import EXAMPLE_PARTS, EXAMPLES_DIR, POSE_EXAMPLE_PARTS, pose_example_name


@dataclass(frozen=True)
class TryOnExample:
    """Inputs of one try-on example; ``mask``/``densepose`` stand in for the preprocessing models."""

    person: Path
    garment: Path
    mask: Path | None = None
    densepose: Path | None = None


@dataclass(frozen=True)
class PoseExample:
    """Inputs of one pose-transfer example; ``densepose`` is that of the target pose."""

    person: Path
    target: Path
    densepose: Path | None = None


def crossed(examples: list[TryOnExample]) -> list[TryOnExample]:
    """Each person (with their mask and DensePose) wearing another example's garment: first every person
    with the next one's garment, then the one after, and so on; the matched pairs are left out (kept when
    there is only one)."""
    count = len(examples)
    if count < 2:
        return list(examples)
    return [
        TryOnExample(person.person, examples[(index + shift) % count].garment, person.mask, person.densepose)
        for shift in range(1, count)
        for index, person in enumerate(examples)
    ]


def poses_of(examples: list[TryOnExample]) -> list[PoseExample]:
    """Pose examples from try-on ones, for example folders without pose examples: each person in the pose of
    the next (with its DensePose)."""
    return [PoseExample(a.person, b.person, b.densepose) for a, b in zip(examples, examples[1:])]


def demo_example_files(folder: Path = EXAMPLES_DIR) -> list[TryOnExample]:
    """Paths of the shipped example inputs (the app's example tables need files, not images)."""
    demo_examples(folder)  # a clear error when the folder is incomplete
    return [
        TryOnExample(*(folder / person.name.replace("person", part, 1) for part in EXAMPLE_PARTS))
        for person in sorted(folder.glob("person_*.png"))
    ]


def demo_pose_example_files(folder: Path = EXAMPLES_DIR) -> list[PoseExample]:
    """Paths of the shipped pose examples (``pose_KK_person/target/densepose.png``: test samples of the pose
    demo model's check batch, written by ``python -m train.synthetic.pose_examples``); empty without any."""
    return [
        PoseExample(*(folder / pose_example_name(index, part) for part in POSE_EXAMPLE_PARTS))
        for index in pose_example_indices(folder)
    ]


def project_poses(folder: Path, examples: list[TryOnExample]) -> list[PoseExample]:
    """The folder's pose examples, or pairs of its try-on persons when it has none."""
    return demo_pose_example_files(folder) or poses_of(examples)

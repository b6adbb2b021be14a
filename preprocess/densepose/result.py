"""What DensePose returns for one image, with helpers to paste charts into the image frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from leffa.common import NoPersonError

from .chart import PersonChart, paste_region


@dataclass
class DensePoseResult:
    """Detections of one image in its original pixel frame, best score first.

    ``boxes`` (N, 4) float32 xyxy, ``scores`` (N,) float32, ``people`` one PersonChart per box,
    ``image_size`` (height, width) of the input image. N may be 0: see ``require_person``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    people: list[PersonChart] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)
    score_threshold: float = 0.5

    @property
    def num_people(self) -> int:
        return len(self.people)

    def require_person(self) -> DensePoseResult:
        """Return self, or raise NoPersonError when nothing was detected."""
        if not self.people:
            raise NoPersonError(
                f"no person found: DensePose detected nobody with a score above {self.score_threshold} in "
                f"the {self.image_size[1]}x{self.image_size[0]} image; use a photo showing one person clearly"
            )
        return self

    def part_index_map(self) -> np.ndarray:
        """(H, W) uint8 part index of all people; where people overlap, later (lower-score) ones win."""
        index_map = np.zeros(self.image_size, dtype=np.uint8)
        for person in self.people:
            image_slices, chart_slices = paste_region(person, self.image_size)
            labels = person.labels[chart_slices]
            target = index_map[image_slices]
            target[labels > 0] = labels[labels > 0]
        return index_map

    def person_iuv(self, index: int = 0) -> np.ndarray:
        """(H, W, 3) float32 [I, U, V] of one person (0 = best score), zero outside the person."""
        self.require_person()
        if not 0 <= index < self.num_people:
            raise IndexError(f"person index {index} out of range: {self.num_people} people detected")
        person = self.people[index]
        iuv = np.zeros((*self.image_size, 3), dtype=np.float32)
        image_slices, chart_slices = paste_region(person, self.image_size)
        iuv[image_slices + (0,)] = person.labels[chart_slices]
        iuv[image_slices + (slice(1, 3),)] = np.moveaxis(person.uv[(slice(None),) + chart_slices], 0, -1)
        return iuv

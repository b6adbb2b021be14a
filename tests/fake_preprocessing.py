"""Fake parsing, OpenPose and DensePose models for the service and app tests (no weights needed).

The parser and OpenPose fakes return one fixed 512x384 person (face, upper clothes, pants; neck, shoulders,
elbows, wrists) whatever the photo; the DensePose fake charts the photo's centre box.
"""

from __future__ import annotations

import numpy as np

from preprocess.densepose import DensePoseResult, PersonChart
from preprocess.openpose import Pose
from preprocess.parsing import LABEL, ParseResult


class FakeParser:
    def __call__(self, person):
        labels = np.zeros((512, 384), np.uint8)
        labels[60:140, 150:234] = LABEL["face"]
        labels[150:330, 110:274] = LABEL["upper_clothes"]
        labels[330:470, 120:264] = LABEL["pants"]
        return ParseResult(labels=labels)


class FakeOpenPose:
    def __call__(self, person):
        keypoints = np.zeros((18, 2), np.float32)
        keypoints[1] = (192, 150)
        keypoints[2], keypoints[3], keypoints[4] = (130, 160), (100, 240), (90, 310)
        keypoints[5], keypoints[6], keypoints[7] = (254, 160), (284, 240), (294, 310)
        return Pose(keypoints=keypoints, confidences=np.ones(18, np.float32))


class FakeDensePose:
    def __init__(self, people=True):
        self.people = people

    def predict(self, image):
        height, width = image.size[1], image.size[0]
        people = []
        if self.people:
            labels = np.full((height // 2, width // 2), 2, np.uint8)
            uv = np.full((2, height // 2, width // 2), 0.5, np.float32)
            people = [PersonChart((width // 4, height // 4, width // 2, height // 2), labels, uv)]
        boxes = np.zeros((len(people), 4), np.float32)
        return DensePoseResult(boxes=boxes, scores=np.ones(len(people), np.float32), people=people, image_size=(height, width))

"""Turns user photos into what the Leffa models need: parse maps, keypoints, DensePose and masks."""

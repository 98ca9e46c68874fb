"""Choosing the head-pose estimator for the `[detector] pose` setting.

Why apart from `edge.pose.fit`: the landmark mode opens a model (the TFLite
runtime, a model file), which the pure fitting code must not reach, even
lazily; this module is the shell that picks and opens an estimator.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge.common.errors import ConfigError
from edge.pose.fit import POSE_MODES, Calibration, KeypointPose, NoPose, PoseEstimator
from edge.pose.landmarks import open_landmark_pose
from edge.vision.manifest import Manifest
from edge.vision.runtime import Runtime


def build_pose_estimator(mode: str, threads: int = 1, *, calibration: Calibration | None = None,
                         manifest: Manifest | None = None, runtime: Runtime | None = None,
                         model_dirs: Sequence[Path] = ()) -> PoseEstimator:
    """The `[detector] pose` setting as an estimator: "landmarks", "keypoints" or "off"."""
    if mode not in POSE_MODES:
        raise ConfigError("detector.pose", f"unknown pose mode '{mode}'", f"one of {', '.join(POSE_MODES)}")
    if mode == "off":
        return NoPose()
    if mode == "keypoints":
        return KeypointPose(calibration)
    return open_landmark_pose(threads, calibration=calibration, manifest=manifest, runtime=runtime,
                              model_dirs=tuple(model_dirs))

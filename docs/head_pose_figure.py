"""Render docs/head-pose.png: the generic face projected at each sign of each angle.

Why rendered, not drawn: the picture is made by the same model, rotation and
projection the firmware uses (`edge.pose.fit`), so it cannot drift from the code.

    .venv/bin/python docs/head_pose_figure.py [--output docs/head-pose.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge.vision.detection import HeadPose
from edge.pose.fit import camera_for, face_model, pose_to_rotation

PANEL = 260
DISTANCE_MM = 380.0
ANGLE = 30.0
# BGR, as cv2.imwrite expects.
BLACK, GREY, RED, BLUE = (0, 0, 0), (170, 170, 170), (0, 0, 210), (200, 90, 0)
# Mesh indices: nose tip, the person's right and left outer eye corners.
NOSE_TIP, RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 1, 33, 263
# The facing arrow runs from the nose tip outward, this many times the nose tip's distance from the head's centre.
ARROW_LENGTH = 1.8
POSITION_MM = np.array([0.0, 10.0, DISTANCE_MM])
PANELS = (
    ("frontal: (0, 0, 0)", HeadPose(0.0, 0.0, 0.0)),
    (f"yaw +{ANGLE:.0f}: turns to image right", HeadPose(ANGLE, 0.0, 0.0)),
    (f"pitch +{ANGLE:.0f}: tilts up", HeadPose(0.0, ANGLE, 0.0)),
    (f"roll +{ANGLE:.0f}: clockwise", HeadPose(0.0, 0.0, ANGLE)),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def panel(title: str, pose: HeadPose) -> np.ndarray:
    image = np.full((PANEL, PANEL, 3), 255, np.uint8)
    camera = camera_for(PANEL, PANEL)
    rvec, _ = cv2.Rodrigues(pose_to_rotation(pose))
    points, _ = cv2.projectPoints(face_model(), rvec, POSITION_MM, camera.matrix, None)
    points = points[:, 0, :]
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), 1, GREY, -1, cv2.LINE_AA)
    eyes = (points[RIGHT_EYE_OUTER], points[LEFT_EYE_OUTER])  # the right eye is on the image's left
    cv2.line(image, tuple(int(v) for v in eyes[0]), tuple(int(v) for v in eyes[1]), BLUE, 2, cv2.LINE_AA)
    # The facing direction: from the head's centre through the nose tip, drawn from the nose.
    nose = face_model()[NOSE_TIP]
    forward, _ = cv2.projectPoints(np.array([nose, nose * ARROW_LENGTH]), rvec, POSITION_MM, camera.matrix, None)
    start, end = (tuple(int(round(v)) for v in p[0]) for p in forward)
    cv2.arrowedLine(image, start, end, RED, 2, cv2.LINE_AA, tipLength=0.25)
    cv2.putText(image, title, (8, PANEL - 12), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    return image


def axes_key() -> np.ndarray:
    image = np.full((PANEL, PANEL, 3), 255, np.uint8)
    origin = (70, 60)
    cv2.arrowedLine(image, origin, (origin[0] + 110, origin[1]), BLACK, 2, cv2.LINE_AA, tipLength=0.12)
    cv2.arrowedLine(image, origin, (origin[0], origin[1] + 90), BLACK, 2, cv2.LINE_AA, tipLength=0.12)
    cv2.circle(image, origin, 11, BLACK, 2, cv2.LINE_AA)
    cv2.line(image, (origin[0] - 7, origin[1] - 7), (origin[0] + 7, origin[1] + 7), BLACK, 2, cv2.LINE_AA)
    cv2.line(image, (origin[0] - 7, origin[1] + 7), (origin[0] + 7, origin[1] - 7), BLACK, 2, cv2.LINE_AA)
    cv2.putText(image, "x", (origin[0] + 115, origin[1] + 5), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "y", (origin[0] + 12, origin[1] + 95), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "z (away)", (origin[0] - 45, origin[1] - 20), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "camera axes", (8, PANEL - 52), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "red: facing direction", (8, PANEL - 32), FONT, 0.45, RED, 1, cv2.LINE_AA)
    cv2.putText(image, "blue: eye line", (8, PANEL - 12), FONT, 0.45, BLUE, 1, cv2.LINE_AA)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "head-pose.png")
    args = parser.parse_args()
    row = np.hstack([axes_key(), *(panel(title, pose) for title, pose in PANELS)])
    cv2.imwrite(str(args.output), row)
    print(args.output)


if __name__ == "__main__":
    main()

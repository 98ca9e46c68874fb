"""Who is where in the shared photographs (tests/fixtures/identity_faces.json), matched to detected faces.

Why a fixture of points and not of detection order: the record says which person's face contains
which point, checked by eye, so it stays true when the detector's order or boxes shift a little;
a face the detector finds that the record does not name (or the reverse) is an error, not a skip.
Used by the accuracy test and by benchmarks/identification.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.vision.detection import Face

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "identity_faces.json"


@dataclass(frozen=True)
class Named:
    """One person's face in one photograph, as the fixture records it."""

    photograph: str
    person: str
    at: tuple[float, float]


def load_fixture(path: Path = FIXTURE) -> dict[str, tuple[Named, ...]]:
    """photograph -> the faces in it (an empty tuple for a photograph of nobody)."""
    raw = json.loads(path.read_text(encoding="utf-8"))["photographs"]
    return {name: tuple(Named(name, str(f["person"]), (float(f["at"][0]), float(f["at"][1]))) for f in faces)
            for name, faces in raw.items()}


def contains(face: Face, point: tuple[float, float]) -> bool:
    box = face.detection.box
    return box.x <= point[0] <= box.x + box.w and box.y <= point[1] <= box.y + box.h


def name_faces(photograph: str, faces: tuple[Face, ...], named: tuple[Named, ...]) -> list[tuple[Named, Face]]:
    """Each recorded person with the one detected face that contains their point; ValueError when the
    detector missed someone, found a face nobody recorded, or one face holds two people's points."""
    pairs = []
    for person in named:
        hits = [face for face in faces if contains(face, person.at)]
        if len(hits) != 1:
            raise ValueError(f"{photograph}: {len(hits)} detected faces contain {person.person}'s point {person.at}")
        pairs.append((person, hits[0]))
    if len({id(face) for _, face in pairs}) != len(pairs) or len(pairs) != len(faces):
        raise ValueError(f"{photograph}: {len(faces)} faces detected, the fixture names {len(named)}")
    return pairs


def pair_scores(people: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every unordered pair of faces: (same-person scores, different-person scores)."""
    scores = vectors @ vectors.T
    upper = np.triu_indices(len(people), k=1)
    same = np.array([people[i] == people[j] for i, j in zip(*upper)], bool)
    return scores[upper][same], scores[upper][~same]

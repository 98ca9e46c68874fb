"""Face embeddings with MobileFaceNet: an aligned face in, a unit vector of 128 numbers out.

Why only here: an embedding is biometric data. It is computed only inside an
identification session (which only a gate-issued grant opens), never
published, and kept only for enrolled people who consented (`gallery`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.vision.detection import Detection
from edge.common.errors import ModelError
from edge.identify import IdentificationSession, require_session
from edge.identify.align import ALIGNED_SIZE, align_face
from edge.vision.runtime import Runner, cpu_runner, load_runtime

EMBEDDING_SIZE = 128
INPUT_SHAPE = (1, ALIGNED_SIZE, ALIGNED_SIZE, 3)
# The int8 model's input quantisation (scale 1/255, zero point -128) spans real [0, 1];
# the float32 model was trained on (x - 127.5) / 128. Both come from PROVENANCE.md.
QUANTISED_GAIN, QUANTISED_OFFSET = 1.0 / 255.0, 0.0
FLOAT_GAIN, FLOAT_OFFSET = 1.0 / 128.0, -127.5 / 128.0
MIN_NORM = 1e-6


class FaceEmbedder:
    """One MobileFaceNet interpreter on the CPU, usable only within an identification session."""

    def __init__(self, session: IdentificationSession, model_path: Path, threads: int = 1) -> None:
        require_session(session)
        self._session = session
        runner = cpu_runner(load_runtime(), Path(model_path), threads)
        self._check(runner)
        self._runner = runner
        if runner.input_codec.quantised:
            self._transform = runner.pixel_transform(QUANTISED_GAIN, QUANTISED_OFFSET)
        else:
            self._transform = runner.pixel_transform(FLOAT_GAIN, FLOAT_OFFSET)

    @staticmethod
    def _check(runner: Runner) -> None:
        if runner.input_shape != INPUT_SHAPE:
            raise ModelError(f"{runner.model_path.name} takes input {runner.input_shape}, not a face embedding "
                             f"model's {INPUT_SHAPE}", "configure a MobileFaceNet model")

    def embed_aligned(self, aligned: np.ndarray) -> np.ndarray:
        """Unit-length embedding of a 112x112x3 uint8 RGB aligned crop."""
        require_session(self._session)  # withdrawn when the gate decided again (e.g. after a revocation)
        if aligned.shape != INPUT_SHAPE[1:] or aligned.dtype != np.uint8:
            raise ValueError(f"expected a {INPUT_SHAPE[1:]} uint8 crop, got {aligned.shape} {aligned.dtype}")
        raw = self._runner.run_pixels(aligned, self._transform)[0].reshape(-1).astype(np.float32)
        if raw.size != EMBEDDING_SIZE:
            raise ModelError(f"{self._runner.model_path.name} gives {raw.size} numbers, expected {EMBEDDING_SIZE}")
        norm = float(np.linalg.norm(raw))
        if norm < MIN_NORM:
            raise ValueError("the model returned a zero embedding for this face")
        return raw / np.float32(norm)

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """Embedding of one detected face (uses the detector's eye, nose and mouth keypoints)."""
        return self.embed_aligned(align_face(image, detection.keypoints))

"""Face embeddings with MobileFaceNet: an aligned face in, a unit vector of 128 numbers out.

Why only here: an embedding is biometric data. It is computed only inside an
identification session (which only a gate-issued grant opens), never
published, and kept only for enrolled people who consented (`gallery`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.vision.detection import Detection
from edge.common.errors import ModelError
from edge.identify import IdentificationSession, require_session
from edge.identify.align import ALIGNED_SIZE, align_face, align_mesh
from edge.pose.fit import PoseEstimator
from edge.pose.landmarks import LandmarkPose
from edge.trust.model_bundle import MODEL_FILE
from edge.vision.runtime import Runner, cpu_runner, load_runtime

if TYPE_CHECKING:
    from edge.identify.bundle import VerifiedBundle

EMBEDDING_SIZE = 128
INPUT_SHAPE = (1, ALIGNED_SIZE, ALIGNED_SIZE, 3)
# The int8 model's input quantisation (scale 1/255, zero point -128) spans real [0, 1];
# the float32 model was trained on (x - 127.5) / 128. Both come from PROVENANCE.md.
QUANTISED_GAIN, QUANTISED_OFFSET = 1.0 / 255.0, 0.0
FLOAT_GAIN, FLOAT_OFFSET = 1.0 / 128.0, -127.5 / 128.0
MIN_NORM = 1e-6


class FaceEmbedder:
    """One embedding interpreter on the CPU, usable only within an identification session.

    From a `VerifiedBundle` (the deployment's signed model: `edge.identify.bundle`) the interpreter
    is built from the verified bytes themselves, and input size, normalisation, alignment template
    and embedding size come from the signed descriptor. From a path (a MobileFaceNet file, for
    tests and measurements) they are MobileFaceNet's.
    """

    def __init__(self, session: IdentificationSession, model: Path | VerifiedBundle, threads: int = 1) -> None:
        require_session(session)
        self._session = session
        self.template: np.ndarray | None = None
        if isinstance(model, Path) or isinstance(model, str):
            runner = cpu_runner(load_runtime(), Path(model), threads)
            self.size, self.embedding_size = ALIGNED_SIZE, EMBEDDING_SIZE
            gain, offset = (QUANTISED_GAIN, QUANTISED_OFFSET) if runner.input_codec.quantised else \
                (FLOAT_GAIN, FLOAT_OFFSET)
        else:
            runner = _bundle_runner(model, threads)
            self._content = model.model  # the interpreter reads from these bytes: they live as long as it does
            descriptor = model.descriptor
            self.size, self.embedding_size = descriptor.input_size, descriptor.embedding_size
            gain, offset = descriptor.input_gain, descriptor.input_offset
            self.template = model.template
        self._check(runner, (1, self.size, self.size, 3))
        self._runner = runner
        self._transform = runner.pixel_transform(gain, offset)

    @staticmethod
    def _check(runner: Runner, shape: tuple[int, ...]) -> None:
        if runner.input_shape != shape:
            raise ModelError(f"{runner.model_path.name} takes input {runner.input_shape}, not a face embedding "
                             f"model's {shape}", "configure a MobileFaceNet model")

    def embed_aligned(self, aligned: np.ndarray) -> np.ndarray:
        """Unit-length embedding of an aligned size x size x 3 uint8 RGB crop."""
        require_session(self._session)  # withdrawn when the gate decided again (e.g. after a revocation)
        shape = (self.size, self.size, 3)
        if aligned.shape != shape or aligned.dtype != np.uint8:
            raise ValueError(f"expected a {shape} uint8 crop, got {aligned.shape} {aligned.dtype}")
        raw = self._runner.run_pixels(aligned, self._transform)[0].reshape(-1).astype(np.float32)
        if raw.size != self.embedding_size:
            raise ModelError(f"{self._runner.model_path.name} gives {raw.size} numbers, expected {self.embedding_size}")
        norm = float(np.linalg.norm(raw))
        if norm < MIN_NORM:
            raise ValueError("the model returned a zero embedding for this face")
        return raw / np.float32(norm)

    def align(self, image: np.ndarray, detection: Detection, mesh: np.ndarray | None = None) -> np.ndarray:
        """The aligned crop: from the face mesh's five points when there is a mesh, else BlazeFace's keypoints."""
        if mesh is not None:
            return align_mesh(image, mesh, self.template, self.size)
        return align_face(image, detection.keypoints, self.template, self.size)

    def embed(self, image: np.ndarray, detection: Detection, mesh: np.ndarray | None = None) -> np.ndarray:
        """Embedding of one detected face, aligned as `align` does."""
        return self.embed_aligned(self.align(image, detection, mesh))


def face_mesh(pose: PoseEstimator, image: np.ndarray, detection: Detection) -> np.ndarray | None:
    """The face mesh (468 x 3, frame pixels) to align with, when the pipeline runs the landmark model.

    None when it does not (`[detector] pose` is "keypoints" or "off") or when the model finds no face
    in the crop. The pipeline's `Face.mesh` already holds this mesh, and the running service, enrolment
    and `identify` align on that; this infers it again, for measuring what that landmark invoke costs
    beside the embedding (benchmarks/identification.py, docs/benchmarks-identification.md).
    """
    if not isinstance(pose, LandmarkPose):
        return None
    return pose.points(image, detection)


def _bundle_runner(bundle: VerifiedBundle, threads: int) -> Runner:
    """The interpreter over the verified bytes (`model_content`): the file is not read again after its check."""
    runtime = load_runtime()
    try:
        interpreter = runtime.interpreter(model_content=bundle.model, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"the bundle's model {bundle.descriptor.name!r} could not be loaded: {str(exc).strip()}",
                         "sign a TFLite embedding model that runs on the CPU") from None
    return Runner(interpreter, runtime, "cpu", bundle.directory / MODEL_FILE)

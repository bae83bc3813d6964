"""Inference workers: frames from the queue -> detector -> verdicts for the recorder.

Several workers may share one `Detector` (ONNX Runtime sessions allow concurrent runs): on a small
CPU two single-threaded inferences side by side beat one two-threaded inference. Each verdict carries
its dispatch number so the recorder can restore capture order.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from edged.config import CameraConfig, ModelConfig
from edged.detector import Detector
from edged.frame_queue import Dispatched, FrameQueue
from edged.frames import Frame, Verdict
from edged.health import Heartbeats, SupervisedThread
from edged.preprocess import FrameError
from edged.recipes import DEFAULT_RECIPE, ActiveRecipe, RecipeBook
from edged.regions import find_regions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decided:
    """What a worker hands to the recorder: a verdict, or a frame it could not inspect."""

    dispatch: int
    camera: str
    verdict: Verdict | None
    error: str = ""
    frame: Frame | None = None
    invalid_output: bool = False  # the model ran but gave NaN/inf: a broken model, never a good part


def _not_finite(score: float, amap: np.ndarray | None) -> str:
    """Why a model output cannot be a verdict ('' when it can)."""
    if not math.isfinite(score):
        return f"model output is not finite (score {score})"
    if amap is not None and not np.isfinite(amap).all():
        return "model output is not finite (anomaly map holds NaN or infinity)"
    return ""


class InferenceWorker(SupervisedThread):
    """One inference thread: batches of one camera from the frame queue through the shared detector, one Decided per
    frame to the recorder (with the reason when a frame cannot be inspected)."""

    def __init__(self, index: int, detector: Detector, frames: FrameQueue, out: queue.Queue[Decided],
                 cameras: Mapping[str, CameraConfig], model_cfg: ModelConfig, heartbeats: Heartbeats,
                 stop: threading.Event, recipes: RecipeBook | None = None) -> None:
        super().__init__(f"inference:{index}", heartbeats)
        self.heartbeats: Heartbeats = heartbeats
        self.what = f"inference:{index}: inference worker"
        self.detector = detector
        self.frames = frames
        self.out = out
        self.cameras = cameras
        self.model_cfg = model_cfg
        self.stop_event = stop
        self.recipes = recipes  # None: every camera runs `detector` (the implicit recipe)
        self._fixed = ActiveRecipe(DEFAULT_RECIPE, detector, None)

    def work(self) -> None:
        """Infer until stopped or the queue is closed and empty (supervised: `SupervisedThread`)."""
        if self.model_cfg.workers > 1:
            # OpenCV's own pool (one thread per core) would fight the other workers for the cores in
            # every resize and color conversion; each worker already has one to itself.
            cv2.setNumThreads(1)
        while True:
            self.heartbeats.beat(self.name)
            batch = self.frames.get_batch(self.model_cfg.batch_size, timeout=0.25)
            if not batch:
                if self.frames.closed or self.stop_event.is_set():
                    return
                continue
            for decided in self.decide(batch):
                self.out.put(decided)

    def decide(self, batch: list[Dispatched]) -> list[Decided]:
        """A Decided per frame of the batch: a frame that cannot be prepared, or whose output is NaN or infinite, gets
        no verdict (never passes as good). The camera's recipe is read ONCE for the batch (one camera's frames):
        a switch lands between batches, so every frame is judged wholly by one model and threshold."""
        dequeued = time.monotonic()
        good: list[tuple[Dispatched, np.ndarray]] = []
        results: list[Decided] = []
        recipe = self.recipes.current(batch[0].frame.camera) if self.recipes is not None else self._fixed
        detector = recipe.detector
        for item in batch:
            try:
                good.append((item, detector.prepare(item.frame.image)))
            except FrameError as exc:
                results.append(Decided(item.dispatch, item.frame.camera, None, str(exc), item.frame))
        if good:
            prepared = time.monotonic()
            outputs = detector.infer_tensor(np.stack([row for _, row in good]))
            mono, wall = time.monotonic(), time.time()
            for (item, _), output in zip(good, outputs, strict=True):
                problem = _not_finite(output.score, output.anomaly_map)
                if problem:  # NaN > threshold is False: such a frame would pass as good
                    results.append(Decided(item.dispatch, item.frame.camera, None, problem, item.frame,
                                           invalid_output=True))
                    continue
                results.append(Decided(item.dispatch, item.frame.camera, self._verdict(
                    recipe, item.frame, output.score, output.anomaly_map, mono, wall, (dequeued, prepared))))
        return results

    def _verdict(self, recipe: ActiveRecipe, frame: Frame, score: float, amap: np.ndarray | None, mono: float,
                 wall: float, stamps: tuple[float, float] = (0.0, 0.0)) -> Verdict:
        cam = self.cameras[frame.camera]
        detector = recipe.detector
        threshold = next(t for t in (recipe.threshold, cam.threshold, detector.threshold) if t is not None)
        defective = bool(score > threshold)
        regions: tuple = ()
        map_threshold = (self.model_cfg.map_threshold if self.model_cfg.map_threshold is not None
                         else detector.map_threshold)
        if defective and amap is not None and map_threshold is not None:
            offset = (cam.roi[0], cam.roi[1]) if cam.roi else (0, 0)
            regions = tuple(find_regions(amap, map_threshold, frame.image.shape[:2], offset,
                                         self.model_cfg.min_region_area))
        return Verdict(frame=frame, score=float(score), threshold=float(threshold), is_defective=defective,
                       decided_mono=mono, decided_at=wall, model=detector.bundle_id, regions=regions,
                       anomaly_map=amap, reason="defect" if defective else "ok", dequeued_mono=stamps[0],
                       prepared_mono=stamps[1], recipe=recipe.name)

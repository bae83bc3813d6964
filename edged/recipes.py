"""Recipes: which model (and threshold) each camera runs, and the product changeover between them.

A line changes product; the new part needs its own bundle. The config names the recipes
(`recipes: {name: {bundle, threshold?}}`; a config with only `model.bundle` has one implicit recipe,
`default`), each camera starts on one, and a command (`<base>/cmd/recipe`) selects another for one camera
or all of them without a restart.

Why it is safe between parts:
- the new model is loaded and verified (bundle checks and a test inference in `Detector`, then one on
  the camera's newest frame) in the switcher's own thread, never on the capture or inference path;
- the switch is ONE dict store of an immutable `ActiveRecipe` per camera; a worker reads it once per
  batch (a batch is one camera's frames), so every frame is judged wholly by one model and threshold;
- a bundle that fails to load or verify refuses the switch with the reason; the old recipe runs on.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from edged.bundle import BundleError
from edged.detector import Detector
from edged.frames import Frame
from edged.health import Heartbeats, SupervisedThread
from edged.preprocess import FrameError
from edged.safetext import escape
from edged.section import Section

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "default"  # the implicit recipe of `model.bundle`
MAX_PENDING_REQUESTS = 16  # recipe commands waiting for the switcher; more are refused (a flood, not a line)


class RecipeConfig(Section):
    """One product's model: its bundle and, optionally, its own score threshold."""

    bundle: Path = Field(description="Folder written by `edged-train fit` for this product (manifest.json and the "
                                     "ONNX files); relative paths are taken from the config file's folder.",
                         examples=["/var/lib/edged/models/bracket-a"])
    threshold: float | None = Field(None, description="Score threshold for this product; null: the camera's "
                                                      "threshold if set, else the bundle's calibrated one.")


@dataclass(frozen=True, slots=True)
class ActiveRecipe:
    """What a camera runs now: replaced whole by a switch, never edited (a worker holds one per batch)."""

    name: str
    detector: Detector
    threshold: float | None  # the recipe's own; None: the camera's, else the bundle's

    @property
    def model(self) -> str:
        """The bundle id that judges this recipe's frames (every row and message names it)."""
        return self.detector.bundle_id


@dataclass(frozen=True, slots=True)
class RecipeRequest:
    """A checked command: switch `cameras` to `recipe`; `request_id` comes back in the acknowledgement."""

    request_id: str
    recipe: str
    cameras: tuple[str, ...]
    received_at: float


@dataclass(frozen=True, slots=True)
class RecipeOutcome:
    """The end of one request: switched, or refused with a reason (the old recipe still running)."""

    request: RecipeRequest
    ok: bool
    reason: str
    model: str | None  # the new bundle id when switched
    previous: Mapping[str, str]  # camera -> the recipe it ran before
    done_at: float


def recipe_table(recipes: Mapping[str, RecipeConfig], default_bundle: Path) -> dict[str, RecipeConfig]:
    """Every recipe a camera may run: the configured ones, plus `default` (`model.bundle`) unless one is named so."""
    table = {DEFAULT_RECIPE: RecipeConfig(bundle=default_bundle)}
    table.update(recipes)
    return table


def starting_recipe(configured: str | None, recipes: Mapping[str, RecipeConfig]) -> str:
    """A camera's first recipe: its `recipe` key, else the first configured recipe, else `default`."""
    if configured is not None:
        return configured
    return next(iter(recipes), DEFAULT_RECIPE)


SELECTION_FILE = "recipes.json"  # in storage.state_dir: each camera's recipe, kept across restarts


def load_selection(path: Path, table: Mapping[str, RecipeConfig]) -> dict[str, str]:
    """The recipes cameras ran before a restart (camera -> recipe), those still in the table; {} when none was kept.
    A line that switched product must not come back from a restart on the old product's model."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read the kept recipes %s (%s): cameras start on their configured recipes", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(cam): name for cam, name in data.items() if isinstance(name, str) and name in table}


def save_selection(path: Path, selection: Mapping[str, str]) -> None:
    """Keep each camera's recipe (atomic: a temp file renamed); a failure is logged, the switch stands."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(dict(selection), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot keep the recipes in %s (%s): a restart would start the configured ones", path, exc)


def verify_on_frame(detector: Detector, frame: Frame | None) -> str:
    """Why `detector` cannot judge this camera's frames ('' when it can): one inference on its newest frame."""
    if frame is None:
        return ""  # no frame yet: the bundle's own test inference (at load) has to do
    try:
        outputs = detector.infer([frame.image])
    except FrameError as exc:
        return f"the camera's frame cannot be prepared for this model: {exc}"
    except Exception as exc:  # ONNX Runtime's own types for a graph that cannot run this input
        return f"a test inference on the camera's newest frame failed: {str(exc).strip()[:200]}"
    if not outputs or not math.isfinite(outputs[0].score):
        return "a test inference on the camera's newest frame gave no finite score"
    return ""


class RecipeBook:
    """Which recipe each camera runs now. Workers call `current` once per batch; only the switcher replaces entries."""

    def __init__(self, table: Mapping[str, RecipeConfig], active: Mapping[str, ActiveRecipe],
                 keep: Path | None = None) -> None:
        self.table = dict(table)
        self._active = dict(active)
        self.keep = keep  # where each camera's recipe is kept across restarts (None: not kept)
        self._switching: Counter[str] = Counter()  # camera -> its requests queued or loading (triggers refused)
        self._lock = threading.Lock()
        self.switches = 0
        self.refusals = 0

    def current(self, camera: str) -> ActiveRecipe:
        """The camera's recipe for the frames about to be judged (one dict read: never half a switch)."""
        return self._active[camera]

    def cameras(self) -> list[str]:
        """Every camera, in config order."""
        return list(self._active)

    def switching(self, camera: str) -> bool:
        """True while a switch of this camera is loading its new model."""
        return self._switching[camera] > 0

    def loaded(self, name: str) -> Detector | None:
        """A detector some camera already runs for recipe `name` (shared, not loaded twice)."""
        return next((a.detector for a in self._active.values() if a.name == name), None)

    def summary(self) -> dict[str, dict[str, str]]:
        """camera -> {recipe, model}: the health file and the web view."""
        return {cam: {"recipe": a.name, "model": a.model} for cam, a in list(self._active.items())}

    def begin(self, cameras: tuple[str, ...]) -> None:
        """Mark the cameras as switching (a trigger meanwhile is refused: `recipe switching`); counted, so a second
        request for a camera keeps it switching until both are over."""
        with self._lock:
            self._switching.update(cameras)

    def end(self, cameras: tuple[str, ...]) -> None:
        """One request of these cameras is over (applied or refused)."""
        with self._lock:
            self._switching.subtract(cameras)
            for cam in [c for c, n in self._switching.items() if n <= 0]:
                del self._switching[cam]

    def apply(self, cameras: tuple[str, ...], recipe: ActiveRecipe) -> dict[str, str]:
        """Point each camera at `recipe` (one store each); returns what they ran before."""
        previous = {cam: self._active[cam].name for cam in cameras}
        for cam in cameras:
            self._active[cam] = recipe
        self.switches += 1
        if self.keep is not None:
            save_selection(self.keep, {cam: a.name for cam, a in self._active.items()})
        return previous


class RecipeSwitcher(SupervisedThread):
    """Loads and verifies the model of each recipe request in its own thread, then switches (or refuses) and
    answers through `answer`. One request at a time, in arrival order."""

    def __init__(self, book: RecipeBook, load: Callable[[RecipeConfig], Detector],
                 newest_frame: Callable[[str], Frame | None], answer: Callable[[RecipeOutcome], None],
                 heartbeats: Heartbeats, stop: threading.Event) -> None:
        super().__init__("recipes", heartbeats)
        self.heartbeats: Heartbeats = heartbeats
        self.what = "recipe switcher"
        self.book = book
        self.load = load
        self.newest_frame = newest_frame
        self.answer = answer
        self.stop_event = stop
        self.inbox: queue.Queue[RecipeRequest] = queue.Queue(maxsize=MAX_PENDING_REQUESTS)

    def submit(self, request: RecipeRequest) -> str:
        """Queue a request (any thread); '' when queued, else why not (the caller acknowledges the refusal)."""
        self.book.begin(request.cameras)  # before the put: the switcher may end it at once
        try:
            self.inbox.put_nowait(request)
        except queue.Full:
            self.book.end(request.cameras)
            return f"{MAX_PENDING_REQUESTS} recipe requests are waiting already"
        return ""

    def work(self) -> None:
        """Serve requests until stopped (supervised: `SupervisedThread`)."""
        while not self.stop_event.is_set():
            self.heartbeats.beat(self.name)
            try:
                request = self.inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                outcome = self.switch(request)
            finally:
                self.book.end(request.cameras)
            self.answer(outcome)

    def switch(self, request: RecipeRequest) -> RecipeOutcome:
        """Load, verify, then apply; any failure refuses the request and leaves every camera as it was."""
        started = time.monotonic()
        cfg = self.book.table.get(request.recipe)
        if cfg is None:  # checked at entry too; the table cannot change, but never trust a stale request
            return self._refused(request, f"recipe {request.recipe!r} is not in the config")
        detector = self.book.loaded(request.recipe)
        if detector is None:
            # a load may take long (a TensorRT engine build: minutes): not a hung thread, so no heartbeat meanwhile
            self.heartbeats.forget(self.name)
            try:
                detector = self.load(cfg)
            except BundleError as exc:
                return self._refused(request, f"model bundle refused: {exc}")
            except Exception as exc:  # an unexpected loader failure must refuse, never kill the thread
                log.exception("recipe %s: loading its model failed", request.recipe)
                return self._refused(request, f"loading the model failed: {type(exc).__name__}: {exc}")
        for cam in request.cameras:
            problem = verify_on_frame(detector, self.newest_frame(cam))
            if problem:
                return self._refused(request, f"camera {cam}: {problem}")
        previous = self.book.apply(request.cameras, ActiveRecipe(request.recipe, detector, cfg.threshold))
        log.info("recipe %s (model %s) now runs on %s (was %s); loaded and verified in %.0f ms", request.recipe,
                 detector.bundle_id, ", ".join(request.cameras), ", ".join(sorted(set(previous.values()))),
                 (time.monotonic() - started) * 1000.0)
        return RecipeOutcome(request, True, "", detector.bundle_id, previous, time.time())

    def _refused(self, request: RecipeRequest, reason: str) -> RecipeOutcome:
        self.book.refusals += 1
        log.warning("recipe request %s (%s on %s) refused: %s; the cameras keep their recipes",
                    escape(request.request_id, 80), request.recipe, ", ".join(request.cameras), escape(reason, 300))
        return RecipeOutcome(request, False, reason, None, {}, time.time())

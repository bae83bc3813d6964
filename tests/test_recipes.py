"""Recipes (edged.recipes): the table from the config, load-and-verify before the switch, refusals that leave
the old model running, a worker that judges each batch by one recipe, and the daemon's `cmd/recipe` over a
real mosquitto with two real bundles."""

from __future__ import annotations

import json
import queue
import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from devkit.support import (
    Broker,
    ServiceRunner,
    Subscriber,
    build_max_bundle,
    json_object,
    spot_frame,
    wait_until,
    write_config,
    write_spot_video,
)
from edged.config import ConfigError, load_config, parse_config
from edged.detector import Detector
from edged.frame_queue import Dispatched
from edged.frames import Frame
from edged.health import Heartbeats
from edged.incoming import CommandRefused, MessageRefused, parse_recipe_command
from edged.recipes import (
    DEFAULT_RECIPE,
    ActiveRecipe,
    RecipeBook,
    RecipeConfig,
    RecipeOutcome,
    RecipeRequest,
    RecipeSwitcher,
    recipe_table,
    starting_recipe,
)
from edged.worker import InferenceWorker


def _config(extra: dict[str, object]) -> dict[str, object]:
    return {"model": {"bundle": "/models/a"}, "cameras": [{"name": "cam1", "source": "0"}], **extra}


# --- config --------------------------------------------------------------------------------------------

def test_a_plain_config_has_one_implicit_recipe() -> None:
    cfg = parse_config(_config({}))
    table = recipe_table(cfg.recipes, cfg.model.bundle)
    assert list(table) == [DEFAULT_RECIPE] and table[DEFAULT_RECIPE].bundle == Path("/models/a")
    assert starting_recipe(cfg.cameras[0].recipe, cfg.recipes) == DEFAULT_RECIPE


def test_cameras_start_on_their_recipe_or_the_first() -> None:
    cfg = parse_config(_config({
        "recipes": {"bracket": {"bundle": "/models/b", "threshold": 0.7}, "flange": {"bundle": "/models/c"}},
        "cameras": [{"name": "cam1", "source": "0"}, {"name": "cam2", "source": "1", "recipe": "flange"}]}))
    assert [starting_recipe(c.recipe, cfg.recipes) for c in cfg.cameras] == ["bracket", "flange"]
    table = recipe_table(cfg.recipes, cfg.model.bundle)
    assert list(table) == [DEFAULT_RECIPE, "bracket", "flange"] and table["bracket"].threshold == 0.7


def test_relative_recipe_bundles_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "edged.yaml"
    path.write_text("model: {bundle: a}\ncameras: [{name: cam1, source: '0'}]\nrecipes: {b: {bundle: models/b}}\n")
    assert load_config(path).recipes["b"].bundle == tmp_path / "models" / "b"


@pytest.mark.parametrize(("extra", "message"), [
    ({"cameras": [{"name": "cam1", "source": "0", "recipe": "nope"}]}, "cameras[0].recipe: nope is not a recipe"),
    ({"recipes": {"bad name": {"bundle": "/b"}}}, "recipes: name bad name must be letters"),
    ({"recipes": {"b": {"threshold": 0.5}}}, "recipes.b.bundle: required key is missing"),
    ({"recipes": {"b": {"bundle": "/b", "thresold": 0.5}}}, "recipes.b.thresold: unknown key (did you mean"),
])
def test_bad_recipes_are_refused_naming_the_key(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(extra))
    assert message in str(err.value), str(err.value)


# --- load, verify, switch --------------------------------------------------------------------------------

@pytest.fixture
def bundles(tmp_path: Path) -> dict[str, Path]:
    a = build_max_bundle(tmp_path / "a", bundle_id="model-a")
    b = build_max_bundle(tmp_path / "b", threshold=0.9, bundle_id="model-b")
    broken = build_max_bundle(tmp_path / "broken", bundle_id="model-broken")
    (broken / "model.onnx").write_bytes(b"not an onnx file")  # its checksum no longer matches
    return {"a": a, "b": b, "broken": broken}


def _book(bundles: dict[str, Path], cameras: tuple[str, ...] = ("cam1", "cam2")) -> RecipeBook:
    table = {name: RecipeConfig(bundle=path, threshold=0.9 if name == "b" else None) for name, path in bundles.items()}
    det = Detector(bundles["a"])
    return RecipeBook(table, {cam: ActiveRecipe("a", det, None) for cam in cameras})


class _Switching:
    """A real switcher thread answering into a queue."""

    def __init__(self, book: RecipeBook, newest: Frame | None = None) -> None:
        self.answers: queue.Queue[RecipeOutcome] = queue.Queue()
        self.stop = threading.Event()
        self.heartbeats = Heartbeats()
        self.thread = RecipeSwitcher(book, lambda r: Detector(r.bundle), lambda cam: newest, self.answers.put,
                                     self.heartbeats, self.stop)
        self.thread.start()

    def ask(self, recipe: str, cameras: tuple[str, ...], request_id: str = "r1") -> RecipeOutcome:
        assert self.thread.submit(RecipeRequest(request_id, recipe, cameras, time.time())) == ""
        return self.answers.get(timeout=30)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive() and not self.heartbeats.dead()


def test_a_switch_loads_verifies_then_applies_to_the_named_camera(bundles: dict[str, Path]) -> None:
    book = _book(bundles)
    old = book.current("cam1")
    sw = _Switching(book)
    try:
        outcome = sw.ask("b", ("cam1",))
    finally:
        sw.close()
    assert outcome.ok and outcome.model == "model-b" and outcome.previous == {"cam1": "a"}, outcome
    assert book.current("cam1").model == "model-b" and book.current("cam1").threshold == 0.9
    assert book.current("cam2") == old and old.model == "model-a"  # the other camera untouched
    assert book.summary() == {"cam1": {"recipe": "b", "model": "model-b"}, "cam2": {"recipe": "a", "model": "model-a"}}
    assert not book.switching("cam1") and book.switches == 1


def test_a_bad_bundle_is_refused_and_the_old_model_runs_on(bundles: dict[str, Path]) -> None:
    book = _book(bundles)
    before = {cam: book.current(cam) for cam in book.cameras()}
    sw = _Switching(book)
    try:
        outcome = sw.ask("broken", ("cam1", "cam2"))
    finally:
        sw.close()
    assert not outcome.ok and outcome.model is None
    assert outcome.reason.startswith("model bundle refused:") and "sha256" in outcome.reason.lower(), outcome.reason
    assert {cam: book.current(cam) for cam in book.cameras()} == before and book.refusals == 1


def test_the_cameras_newest_frame_is_judged_by_the_new_model_before_the_switch(bundles: dict[str, Path]) -> None:
    """A frame the new model cannot take (here a two-channel image) refuses the switch there, not on a part."""
    book = _book(bundles)
    sw = _Switching(book, newest=Frame("cam1", 0, np.zeros((60, 80, 2), np.uint8), 0.0, 0.0))
    try:
        refused = sw.ask("b", ("cam1",))
    finally:
        sw.close()
    assert not refused.ok and refused.reason.startswith("camera cam1: the camera's frame cannot be prepared"), refused
    assert book.current("cam1").model == "model-a"
    sw = _Switching(book, newest=Frame("cam1", 0, spot_frame(False), 0.0, 0.0))
    try:
        fine = sw.ask("b", ("cam1",), request_id="r2")
    finally:
        sw.close()
    assert fine.ok and book.current("cam1").model == "model-b"


def test_the_worker_judges_each_batch_by_the_recipe_it_read(bundles: dict[str, Path]) -> None:
    """Threshold and model id come from one recipe: the same bright spot is a defect for a (0.5), good for b
    (0.9 at a 0.7 gray level)."""
    from edged.config import parse_config as parse

    cfg = parse(_config({"cameras": [{"name": "cam1", "source": "0"}, {"name": "cam2", "source": "1"}]}))
    book = _book(bundles)
    worker = InferenceWorker(0, book.current("cam1").detector, None,  # type: ignore[arg-type]  # decide() only
                             queue.Queue(), {c.name: c for c in cfg.cameras}, cfg.model, Heartbeats(),
                             threading.Event(), recipes=book)
    image = spot_frame(True)
    image[image == 255] = 180  # 180/255 = 0.71: over a's 0.5, under b's 0.9
    batch = [Dispatched(Frame("cam1", i, image, 0.0, 0.0), i) for i in range(3)]
    first = worker.decide(batch)
    book.apply(("cam1",), ActiveRecipe("b", Detector(bundles["b"]), 0.9))
    second = worker.decide(batch)
    assert [(d.verdict.recipe, d.verdict.model, d.verdict.is_defective) for d in first if d.verdict] == \
        [("a", "model-a", True)] * 3
    assert [(d.verdict.recipe, d.verdict.model, d.verdict.is_defective, d.verdict.threshold)
            for d in second if d.verdict] == [("b", "model-b", False, 0.9)] * 3


# --- the command's payload ----------------------------------------------------------------------------

def test_recipe_commands_are_checked_where_they_enter() -> None:
    cams, recipes = ["cam1", "cam2"], ["default", "b"]
    req = parse_recipe_command(b'{"request_id": "42", "recipe": "b", "camera": "cam2"}', 5.0, cams, recipes)
    assert req == RecipeRequest("42", "b", ("cam2",), 5.0)
    assert parse_recipe_command(b'{"request_id": 7, "recipe": "b"}', 5.0, cams, recipes).cameras == ("cam1", "cam2")
    with pytest.raises(CommandRefused) as err:
        parse_recipe_command(b'{"request_id": "9", "recipe": "x\\n"}', 5.0, cams, recipes)
    assert err.value.request_id == "9" and str(err.value).startswith("unknown recipe x\\x0a (known: default, b)")
    with pytest.raises(CommandRefused, match="unknown camera cam9"):
        parse_recipe_command(b'{"request_id": "9", "recipe": "b", "camera": "cam9"}', 5.0, cams, recipes)
    for bad in (b'{"recipe": "b"}', b'{"request_id": "", "recipe": "b"}', b'{"request_id": "a\\u0007"}', b"[1]"):
        with pytest.raises(MessageRefused) as refused:
            parse_recipe_command(bad, 5.0, cams, recipes)
        assert not isinstance(refused.value, CommandRefused), bad


# --- the daemon -----------------------------------------------------------------------------------------

class _Commander:
    """A real paho client publishing recipe commands (QoS 1)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-commander")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, body: dict[str, object], topic: str = "edged/test/cmd/recipe") -> None:
        self.client.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_the_daemon_switches_recipes_on_command_and_every_row_names_its_recipe(
        tmp_path: Path, broker: Broker, bundles: dict[str, Path]) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 1200, {i for i in range(0, 1200, 10)})
    cfg_path = write_config(
        tmp_path / "edged.yaml", bundles["a"], video, tmp_path / "state", broker.port,
        extra_camera="    realtime: true\n    fps: 30\n    recipe: a",
        extra=f"recipes: {{a: {{bundle: {bundles['a']}}}, b: {{bundle: {bundles['b']}, threshold: 0.9}}, "
              f"broken: {{bundle: {bundles['broken']}}}}}", mqtt_extra="publish_results: true")
    sub = Subscriber(broker.port, ["edged/test/result", "edged/test/reject", "edged/test/cmd/recipe/ack"])
    runner = ServiceRunner(load_config(cfg_path)).start()
    cmd: _Commander | None = None
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connected, 20, "the broker")
        cmd = _Commander(broker.port)
        sub.wait_for_objects("edged/test/result", 10, timeout=20)
        cmd.send({"request_id": "unknown-1", "recipe": "nope"})
        cmd.send({"request_id": "broken-1", "recipe": "broken"})
        cmd.send({"request_id": "b-1", "recipe": "b", "camera": "cam1"})
        acks = {str(a["request_id"]): a for a in sub.wait_for_objects("edged/test/cmd/recipe/ack", 3, timeout=30)}
        switched_results = len(sub.objects("edged/test/result"))
        wait_until(lambda: len(sub.objects("edged/test/result")) > switched_results + 30, 20, "results after")
        health = runner.service.health()
    finally:
        if cmd is not None:
            cmd.close()
        runner.stop()
        sub.close()
    assert acks["unknown-1"]["result"] == "refused" and "unknown recipe" in str(acks["unknown-1"]["reason"])
    assert acks["broken-1"]["result"] == "refused" and acks["broken-1"]["current"] == {"cam1": "a"}, acks
    assert str(acks["broken-1"]["reason"]).startswith("model bundle refused"), acks
    assert acks["b-1"]["result"] == "switched" and acks["b-1"]["model"] == "model-b", acks
    assert acks["b-1"]["current"] == {"cam1": "b"} and acks["b-1"]["cameras"] == ["cam1"]
    assert health["model"] == "model-b" and health["recipes"] == {"cam1": {"recipe": "b", "model": "model-b"}}
    results = sorted(sub.objects("edged/test/result"), key=lambda r: int(str(r["seq"])))
    kinds = [(r["recipe"], r["model"], r["threshold"]) for r in results]
    assert set(kinds) == {("a", "model-a", 0.5), ("b", "model-b", 0.9)}, set(kinds)  # never a mix of the two
    first_b = kinds.index(("b", "model-b", 0.9))
    assert all(k[0] == "a" for k in kinds[:first_b]) and all(k[0] == "b" for k in kinds[first_b:])  # one switch
    rejects = [json_object(r) for r in sub.objects("edged/test/reject")]
    assert rejects and all(r["recipe"] in ("a", "b") for r in rejects)
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    rows = db.execute("SELECT recipe, model, COUNT(*) FROM inspections GROUP BY recipe, model").fetchall()
    assert {(r, m) for r, m, _ in rows} == {("a", "model-a"), ("b", "model-b")}, rows


def test_an_older_database_gets_the_recipe_column_and_keeps_its_rows(tmp_path: Path) -> None:
    from edged.store import SCHEMA, open_database

    path = tmp_path / "edged.db"
    old = sqlite3.connect(path)
    old.executescript(re.sub(r",( *--[^\n]*)\n *recipe +TEXT[^\n]*\n", r"\1\n", SCHEMA))  # as before the column
    old.execute("INSERT INTO inspections (uid, seq, camera, captured_at, decided_at, is_defective) "
                "VALUES ('u', 1, 'cam1', 1.0, 1.0, 0)")
    old.commit()
    assert "recipe" not in {r[1] for r in old.execute("PRAGMA table_info(inspections)")}
    old.close()
    conn = open_database(path)
    assert conn.execute("SELECT uid, recipe FROM inspections").fetchall() == [("u", None)]


def test_a_camera_stays_switching_until_its_last_queued_request_is_over(bundles: dict[str, Path]) -> None:
    book = _book(bundles)
    answers: queue.Queue[RecipeOutcome] = queue.Queue()
    stop, beats = threading.Event(), Heartbeats()
    switcher = RecipeSwitcher(book, lambda r: Detector(r.bundle), lambda cam: None, answers.put, beats, stop)
    assert switcher.submit(RecipeRequest("r1", "b", ("cam1",), 0.0)) == ""
    assert switcher.submit(RecipeRequest("r2", "broken", ("cam1", "cam2"), 0.0)) == ""
    assert book.switching("cam1") and book.switching("cam2")  # queued: triggers are refused meanwhile
    switcher.start()
    try:
        first, second = answers.get(timeout=30), answers.get(timeout=30)
    finally:
        stop.set()
        switcher.join(5)
    assert (first.ok, second.ok) == (True, False)
    assert not book.switching("cam1") and not book.switching("cam2")
    assert book.current("cam1").name == "b" and book.current("cam2").name == "a"


def test_a_restart_comes_back_on_the_recipe_selected_before_it(tmp_path: Path, bundles: dict[str, Path]) -> None:
    """A line that switched product must not restart on the old product's model: the selection is kept in the state
    directory (written at each switch), and only recipes still in the config are taken from it."""
    from edged.recipes import SELECTION_FILE, load_selection
    from edged.service import Service

    state = tmp_path / "state"
    state.mkdir()
    cfg = parse_config({"model": {"bundle": str(bundles["a"])}, "mqtt": {"enabled": False},
                        "storage": {"state_dir": str(state)}, "recipes": {"a": {"bundle": str(bundles["a"])},
                                                                           "b": {"bundle": str(bundles["b"])}},
                        "cameras": [{"name": "cam1", "source": "0"}, {"name": "cam2", "source": "1"}]})

    def started() -> dict[str, str]:
        service = Service(cfg, handle_signals=False)
        service._load_recipes()
        assert service.recipes is not None
        return {cam: a["recipe"] for cam, a in service.recipes.summary().items()}

    assert started() == {"cam1": "a", "cam2": "a"}  # nothing kept yet: the configured (first) recipe
    book = _book(bundles)
    book.keep = state / SELECTION_FILE
    book.apply(("cam2",), ActiveRecipe("b", Detector(bundles["b"]), None))
    assert load_selection(state / SELECTION_FILE, book.table) == {"cam1": "a", "cam2": "b"}
    assert started() == {"cam1": "a", "cam2": "b"}
    (state / SELECTION_FILE).write_text('{"cam1": "gone", "cam2": "b"}')  # a recipe since removed from the config
    assert started() == {"cam1": "a", "cam2": "b"}
    (state / SELECTION_FILE).write_text("{not json")
    assert started() == {"cam1": "a", "cam2": "a"}


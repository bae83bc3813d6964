"""A recipe switch under load (devkit/recipe_load.py): a 30 fps video, MQTT triggers every 100 ms, two switches
over a real mosquitto. No frame is judged by a mix of two models, every trigger gets exactly one result, and
the camera's results change recipe only at the switches. The switch time is measured by
`scripts/bench.py recipes`, not checked here."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from devkit import recipe_load
from devkit.support import Broker, report_figures


@pytest.mark.slow
def test_a_switch_under_load_judges_each_frame_by_one_model_and_answers_every_trigger_once(
        tmp_path: Path, broker: Broker) -> None:
    run = recipe_load.run(tmp_path, broker.port, seconds=6.0, switches=2)
    assert len(run.triggers) >= 50, len(run.triggers)
    by_part: dict[str, list[dict[str, object]]] = {}
    for r in run.results:
        by_part.setdefault(str(r["part_id"]), []).append(r)
    assert sorted(by_part) == sorted(run.triggers), "a trigger without its result, or a result of no trigger"
    assert all(len(v) == 1 for v in by_part.values()), [v for v in by_part.values() if len(v) > 1]  # exactly one
    judged = [r for r in run.results if r["reason"] != "not_inspected"]
    kinds = {(r["recipe"], r["model"], r["threshold"]) for r in judged}
    assert kinds == {("a", "model-a", 0.5), ("b", "model-b", 0.9)}, kinds  # both ran, never a mix
    in_order = [str(r["recipe"]) for r in sorted(judged, key=lambda r: int(str(r["seq"])))]
    changes = sum(1 for x, y in itertools.pairwise(in_order) if x != y)
    assert changes == 2, in_order  # a -> b -> a, each exactly once, in capture order
    assert [a["result"] for a in run.recipe_acks] == ["switched", "switched"], run.recipe_acks
    refused = [a for a in run.trigger_acks if a["result"] == "refused"]
    assert all(a["reason"] == "recipe_switching" for a in refused), refused  # the only refusal under load
    assert len(run.trigger_acks) == len(run.triggers)
    report_figures("recipe_switch_under_load", {"triggers": len(run.triggers), "switch_ms": run.switch_ms(),
                                                "ack_ms": run.ack_ms(), "refused_while_switching": len(refused)})


@pytest.mark.slow
def test_the_recipes_benchmark_runs(tmp_path: Path) -> None:
    """`scripts/bench.py recipes` in a tiny configuration, so it cannot rot (no speed is checked)."""
    import json

    from devkit.localbroker import LocalBroker
    from devkit.support import load_script

    if not LocalBroker.available():
        pytest.skip("mosquitto is not installed")
    out = tmp_path / "recipes.json"
    assert load_script("bench").main(["recipes", "--work", str(tmp_path / "work"), "--runs", "1", "--switches", "1",
                                      "--seconds", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["switches"] == 1 and report["switch_ms"]["n"] == 1 and report["triggers"] >= 10

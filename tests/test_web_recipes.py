"""The web view's recipe selector (edged/web/: pages.recipe_card, WebApp._select_recipe) against a running line
with two real bundles: shown on the overview, a switch by form (CSRF-protected) lands and names the new model,
a bundle that fails its checks is refused with the reason and the old recipe runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.support import Broker, ServiceRunner, build_max_bundle, wait_until, write_config, write_spot_video
from devkit.webline import PASSWORD, Client, WebLine
from edged.config import load_config


@pytest.mark.slow
def test_the_overview_switches_recipes_by_form(tmp_path: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 90, {45})
    a = build_max_bundle(tmp_path / "a", bundle_id="model-a")
    b = build_max_bundle(tmp_path / "b", bundle_id="model-b")
    broken = build_max_bundle(tmp_path / "broken", bundle_id="model-broken")
    (broken / "model.onnx").write_bytes(b"not a model")
    secret = tmp_path / "web-password"
    secret.write_text(PASSWORD)
    cfg = load_config(write_config(
        tmp_path / "edged.yaml", a, video, tmp_path / "state", broker.port,
        extra_camera="    loop: true\n    realtime: true\n    fps: 30\n    recipe: a",
        extra=f"web: {{port: 0, password_file: {secret}}}\n"
              f"recipes: {{a: {{bundle: {a}}}, b: {{bundle: {b}}}, broken: {{bundle: {broken}}}}}"))
    runner = ServiceRunner(cfg).start()
    try:
        wait_until(lambda: runner.service.web is not None or runner.error is not None, 30, "the web view")
        web = runner.service.web
        assert web is not None, runner.error
        client = Client(WebLine(runner, broker, tmp_path / "state", web.listening.host, web.listening.port))
        assert client.login().status == 303
        page = client.get("/").text
        forged = client.post_form("/recipe", {"camera": "cam1", "recipe": "b", "csrf": "guess"})
        refused = client.post_form("/recipe", {"camera": "cam1", "recipe": "broken", "csrf": client.csrf or ""})
        after_refusal = runner.service.recipes.summary() if runner.service.recipes else {}
        switched = client.post_form("/recipe", {"camera": "cam1", "recipe": "b", "csrf": client.csrf or ""})
        wait_until(lambda: runner.service.counters.inspected > 0, 20, "inspection goes on")
        page_after = client.get("/").text
    finally:
        runner.stop()
    assert 'id="recipe-form"' in page and '<td class="recipe">a</td>' in page
    assert all(f'<option value="{n}">' in page for n in ("default", "a", "b", "broken"))
    assert forged.status == 403
    assert refused.status == 409 and "model bundle refused" in refused.text, refused.text
    assert after_refusal == {"cam1": {"recipe": "a", "model": "model-a"}}
    assert switched.status == 303 and switched.headers.get("location") == "/"
    assert '<td class="recipe">b</td><td>model-b</td>' in page_after

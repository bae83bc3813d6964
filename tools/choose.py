"""`edged-train fit --choose`: a few configurations, and the one that ranks the user's defect images best.

Why only on request: a model chosen on defect images is tuned to the defects one happened to collect,
and every figure measured on those same images is then optimistic. The default fit never looks at
them to decide anything (it only reports recall on them). When a quality engineer does have a few
defect images and asks, each candidate is fitted whole (cross-fitted threshold and all) and judged by
``crossval_auroc``: its out-of-fold good scores against its scores of the defect images, a figure that
uses no model trained on the image it scores and none of the test's good parts. The manifest records
the table, the choice and why, and marks the bundle as chosen on those images, so that `evaluate` on
the same images says its figures are optimistic.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.bundle import load_manifest, write_manifest
from tools import bundle_out
from tools.fit import FitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One configuration: a name for the report, method options, and a pixel budget (None: the method's)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None


# Per method; the first is the method's default. Kept few: each one is a whole fit.
CANDIDATES: dict[str, tuple[Candidate, ...]] = {
    "patchcore": (
        Candidate("default (Lite1 s4+s5+s6, 160 px budget, top 10%)"),
        Candidate("224 px budget", budget=224),
        Candidate("image score = maximum cell", {"top": 0.0}),
        # ranks better on every set measured, but rejects good parts under sensor noise (docs/detection.md)
        Candidate("fused pooling (largest z-score of the maximum, top 10% and mean)", {"pool": "fused"}),
        Candidate("Lite0 s5+s6", {"backbone": "lite0", "layers": "s5,s6"}),
        # the memory bank alone ranks a busy texture poorly where the autoencoder does better (docs/detection.md)
        Candidate("feature autoencoder beside the bank (weight 0.5)", {"featae": 0.5}),
        # an image-level Gaussian ranks faint, spread-out defects on busy textures far better (docs/detection.md)
        Candidate("image Gaussian beside the bank (weight 1)", {"gaussian": 1.0}),
    ),
}


class ChooseError(FitError):
    """--choose cannot judge: no defect images to judge by."""


def choose_and_fit(cfg: Any, fit: Any) -> Any:
    """Fit every candidate of ``cfg.method``, keep the best by ``crossval_auroc`` at ``cfg.out``.

    ``fit`` is `tools.fit.fit_bundle` (passed in: this module is imported by it). Options the user gave
    with --opt win over a candidate's; a fixed --size overrides every budget.
    """
    candidates = CANDIDATES.get(cfg.method, (Candidate("default"),))
    out = Path(cfg.out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.choose-", dir=out.parent))
    table: list[dict[str, Any]] = []
    try:
        results = []
        for i, cand in enumerate(candidates):
            c = copy.deepcopy(cfg)
            c.out = work / f"c{i}"
            c.options.extra = {**cand.options, **cfg.options.extra}
            if cand.budget is not None and cfg.auto_size:
                c.size_budget = cand.budget
            log.info("--choose: candidate %d/%d: %s", i + 1, len(candidates), cand.name)
            result = fit(c)
            v = result.manifest.training.params.get("verification")
            if not isinstance(v, dict) or v.get("crossval_auroc") is None:
                raise ChooseError(f"{cfg.data}: --choose needs defect images to judge by (test/<defect> folders "
                                  f"in the MVTec layout); none were found")
            m = result.manifest
            row = {"candidate": cand.name, "options": c.options.extra,
                   "size": [m.input.width, m.input.height], "crossval_auroc": v["crossval_auroc"],
                   "recall_at_threshold": v["recall"], "test_frr": v["frr"]}
            table.append(row)
            results.append(result)
            log.info("--choose: %s: cross-validated AUROC %.4f, recall %.1f%% at its threshold", cand.name,
                     v["crossval_auroc"], 100 * v["recall"])
        best = max(range(len(table)), key=lambda j: (table[j]["crossval_auroc"], -j))
        why = (f"highest cross-validated image AUROC ({table[best]['crossval_auroc']:.4f}) of out-of-fold good "
               f"scores against the scores of {results[best].manifest.training.params['verification']['n_defective']}"
               f" defect images; ties go to the earlier (simpler) candidate")
        _install(results[best].bundle, out, table, table[best]["candidate"], why)
        result = results[best]
        result.bundle = out
        result.manifest = load_manifest(out)
        log.info("--choose: kept %s (%s)", table[best]["candidate"], why)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(chosen: Path, out: Path, table: list[dict[str, Any]], name: str, why: str) -> None:
    """Record the choice in the chosen bundle's manifest and swap it in at `out`."""
    m = load_manifest(chosen)
    params = dict(m.training.params)
    found = params.get("verification")
    verification = dict(found) if isinstance(found, dict) else {}
    verification["chosen_on_these_images"] = True
    params["verification"] = verification
    params["choice"] = {"chosen": name, "why": why, "candidates": table}
    write_manifest(chosen, m.model_copy(update={"training": m.training.model_copy(update={"params": params})}))
    tmp = bundle_out.staging(out)
    try:
        for item in chosen.iterdir():
            shutil.move(str(item), tmp / item.name)
        bundle_out.install(tmp, out)
    except BaseException:
        bundle_out.discard(tmp)
        raise

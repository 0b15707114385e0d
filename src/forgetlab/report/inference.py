"""The dataset-inference page: verdict, score distributions, p-value against sample size, feature AUCs."""
from __future__ import annotations

from pathlib import Path

from .figures import p_by_size_png, score_histogram_png
from .html import _ENV, _data_uri


def write_inference_page(raw: dict, path: Path) -> Path:
    """Render an ``inference.json`` dict as one self-contained HTML page."""
    sizes = raw["p_by_size"]
    page = _ENV.get_template("inference.html").render(
        r=raw,
        histogram=_data_uri(score_histogram_png(raw["scores"]["suspect"], raw["scores"]["reference"])),
        curve=_data_uri(p_by_size_png([s["n"] for s in sizes], [s["p_value"] for s in sizes], raw["alpha"])),
        features=sorted(raw["feature_auc"].items(), key=lambda kv: -abs(kv[1] - 0.5)),
        weights=raw["aggregator_weights"],
    )
    path.write_text(page, encoding="utf-8")
    return path

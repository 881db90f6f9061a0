"""The scripted run that the evidence tests share: the tutorial's analyze -> classify pipeline, p -> w,
small enough to finish in seconds, large enough that rounds change some examples."""

from __future__ import annotations

from typing import Any

from core.config.defaults import scripted_config_dict


def scripted_evidence_config() -> dict[str, Any]:
    """A run document: 24/16/12 examples, a 2-candidate random search, then one epoch of self traces."""
    doc = scripted_config_dict("analyze_classify")
    doc["data"]["split"] = {"train": 24, "val": 16, "test": 12, "seed": 0}
    doc["strategy"] = "p -> w"
    doc["optimizers"] = {
        "p": {"type": "random_search", "settings": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2,
                                                    "num_candidate_programs": 2}},
        "w": {"type": "finetune", "settings": {"epochs": 1, "batch_size": 8, "min_score": 1.0,
                                               "trace_source": "self"}},
    }
    return doc

"""Why a round is better: per-example evidence, round diffs, training rows, and the shareable report.

- ``capture``: ``EvidenceCollector``, the DSPy callback that records each example of our evaluations
  (inputs, gold, outputs, score, error, every LM call) and the weight steps' training rows;
- ``diff``: instruction and demo diffs between two rounds' saved programs, per predictor;
- ``report``: one self-contained HTML file of a run (``python -m core report RUN_ID OUT.html``).

Storage (tables, paging, filters) is ``core.store.evidence``.
"""

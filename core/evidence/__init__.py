"""Why a round is better: per-example evidence, round diffs, training rows, and the shareable report.

- ``capture``: ``EvidenceCollector``, the DSPy callback that records each example of our evaluations
  (inputs, gold, outputs, score, error, every LM call) and the weight steps' training rows;
  ``CallbackTee`` registers it together with the run's observer as one callback;
- ``diff``: instruction and demo diffs between two rounds' saved programs, per predictor;
- ``report`` (with ``report_assets``): one self-contained HTML file of a run
  (``python -m core report RUN_ID OUT.html``; the export bundle's ``report.html``).

Storage (tables, paging, filters) is ``core.store.evidence``; the Results page's view models (matrix
records, trace steps, training rows) are ``core.views.evidence``.
"""

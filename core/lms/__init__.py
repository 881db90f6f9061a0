"""LM back-ends: the embedded llama.cpp models, their catalogue, hosted LMs, the scripted test LM and
the fine-tuning providers.

Public modules (imported by name; this package imports none of them, so that loading the catalogue
never loads llama.cpp or torch):

- ``catalog``: the embedded models and every name rule (``embedded/<key>``, ``local/<key>``, ``:ft-`` fine-tunes);
- ``local`` (your own model on disk: checked, keyed by content, converted once), ``model_files`` (safetensors
  headers, GGUF metadata, cached digests), ``chat_template`` (a model's own Jinja chat template);
- ``registry``: builds ``dspy.LM`` objects from the configuration's LM specs, wiring engine and provider;
- ``embedded`` (engine), ``llama_models`` (loading, fine-tuned artifacts), ``generation`` (the
  cancellable token loop), ``grammar`` (GBNF from ChatAdapter messages), ``call_cache``, ``cpu``;
- ``runtime``: how a run calls each LM (parallel-call limit, grammar), found by model name;
- ``adapter``: the ChatAdapter every run uses, with grammar-constrained output for servers that take one;
- ``probe`` (Test connection: one tiny call), ``doctor`` (``python -m core doctor``: do the embedded
  models run on this CPU?);
- ``lora`` (LoRA fine-tuning on the CPU), ``gguf_export``, ``hosted`` (LiteLLM errors, prices, OpenAI
  fine-tuning), ``scripted`` (the test LM).
"""

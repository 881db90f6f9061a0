"""LM back-ends: the embedded llama.cpp models, their catalogue, the scripted test LM and providers.

``runtime`` holds how a run calls each LM (parallel-call limit, grammar), found by model name.
"""

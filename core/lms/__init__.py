"""LM back-ends: the embedded llama.cpp models, their catalogue, the scripted test LM and providers."""

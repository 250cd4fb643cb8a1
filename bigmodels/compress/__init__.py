"""Transforms that restructure a model on purpose: fusing (batch-norm folding, q/k/v packing, compiling) first.

Models stay pure (DESIGN.md): nothing here is imported by a model, and nothing here imports a specific family.
"""

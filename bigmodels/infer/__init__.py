"""Running a model: pipelines (task -> callable), decoding (decoder-only and encoder-decoder), embedding, prediction.

Everything above ``train`` that needs a model's outputs calls into here; nothing here trains.
"""

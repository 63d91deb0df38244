"""
Writes dev/reference/schedules.txt: the learning rate of every optimizer step
of a few schedules, and what a few --max_train_tokens values mean, as the
authors' own code computes them. test_subtrack.c parses each case's flags with
our trainer's parser and compares lr_at_step and token_budget_parse with them.

The schedules come from their get_scheduler (peft_pretraining/training_utils.py
in their repository: cosine and cosine_restarts; for linear it calls
transformers.get_linear_schedule_with_warmup), driven as their
torchrun_main.py drives it: a torch.optim optimizer at the base lr, and one
scheduler.step() after each optimizer.step(), so step k runs at the lr the
scheduler holds after k calls. Their main() never passes cycle_length or
restart_warmup_steps to get_scheduler (so --scheduler cosine_restarts stops at
an assertion in their script); this script passes them, as our
--cycle_length and --restart_warmup_steps do. The budgets come from their
max_train_tokens_to_number.

Their repository is imported from a local copy (its heavy imports stay
unused: only training_utils is loaded). Nothing of their code is copied
here; only the values are written.

    python dev/reference/schedules.py --authors_repo /tmp/SubTrack [--authors_commit HASH]

Needs torch and transformers.
"""
import argparse
import importlib.util
import os
import subprocess

import torch

# name, our flags (each also the settings their get_scheduler gets), steps
CASES = [
    ("cosine", "--lr 0.001 --warmup_steps 10 --num_training_steps 100 --min_lr_ratio 0.1 --scheduler cosine"),
    ("linear", "--lr 0.001 --warmup_steps 10 --num_training_steps 100 --min_lr_ratio 0.1 --scheduler linear"),
    ("restarts", "--lr 0.002 --warmup_steps 10 --num_training_steps 120 --min_lr_ratio 0.1 "
                 "--scheduler cosine_restarts --cycle_length 40 --restart_warmup_steps 5"),
    # a restart warmup longer than the first: the lr dips right after the first warmup
    ("restarts_dip", "--lr 0.001 --warmup_steps 3 --num_training_steps 60 --min_lr_ratio 0.2 "
                     "--scheduler cosine_restarts --cycle_length 20 --restart_warmup_steps 8"),
    ("restarts_no_warmup", "--lr 0.001 --warmup_steps 5 --num_training_steps 30 --min_lr_ratio 0.1 "
                           "--scheduler cosine_restarts --cycle_length 10 --restart_warmup_steps 0"),
]

# --max_train_tokens values; their parser's number, or that it raises
BUDGETS = ["100M", "1B", "2B", "123456", "7M", "0", "1.5B", "100K", "M", "B", "1e9", "10MB", "5m"]


def flags_dict(flags):
    words = flags.split()
    return {words[i].lstrip("-"): words[i + 1] for i in range(0, len(words), 2)}


def load_training_utils(repo):
    path = os.path.join(repo, "peft_pretraining", "training_utils.py")
    spec = importlib.util.spec_from_file_location("authors_training_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lrs(utils, f):
    """the lr of each optimizer step 0..N-1 under their scheduler"""
    n = int(f["num_training_steps"])
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=float(f["lr"]))
    kw = dict(scheduler_type=f["scheduler"], num_training_steps=n, warmup_steps=int(f["warmup_steps"]),
              min_lr_ratio=float(f["min_lr_ratio"]))
    if f["scheduler"] == "cosine_restarts":
        kw.update(cycle_length=int(f["cycle_length"]), restart_warmup_steps=int(f["restart_warmup_steps"]))
    sched = utils.get_scheduler(opt, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors_repo", required=True, help="a copy of the authors' SubTrack repository")
    ap.add_argument("--authors_commit", help="its commit (default: git rev-parse HEAD in it)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules.txt"))
    opts = ap.parse_args()
    commit = opts.authors_commit or subprocess.run(["git", "-C", opts.authors_repo, "rev-parse", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip()
    utils = load_training_utils(opts.authors_repo)
    import transformers
    lines = [
        "# the authors' learning-rate schedules and token budgets: written by dev/reference/schedules.py",
        f"# from their repository at commit {commit or '(unknown)'}, with torch {torch.__version__} and",
        f"# transformers {transformers.__version__}. do not edit; regenerate.",
        "# format: 'case NAME', 'args FLAGS', then 'lr STEP VALUE' for every optimizer step (the lr",
        "# step STEP runs at), then 'end'; 'budget ARG TOKENS' (their max_train_tokens_to_number) or",
        "# 'budget ARG error' (it raises)",
    ]
    for name, flags in CASES:
        lines += [f"case {name}", f"args {flags}"]
        lines += [f"lr {k} {v!r}" for k, v in enumerate(lrs(utils, flags_dict(flags)))]
        lines.append("end")
    for arg in BUDGETS:
        try:
            tokens = utils.max_train_tokens_to_number(arg)
        except ValueError:
            tokens = "error"
        lines.append(f"budget {arg} {tokens}")
    with open(opts.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {opts.out}: {len(CASES)} schedules, {len(BUDGETS)} budgets")


if __name__ == "__main__":
    main()

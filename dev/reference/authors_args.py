"""
Writes dev/reference/authors_args.txt: what the authors' torchrun_main.py
makes of the command line of each of their C4 scripts (scripts/c4/*.sh) and
of the 1B example in their README, plus a few command lines that lean on
their defaults. test_subtrack.c parses each command line with our trainer's
parser and checks that every setting matches.

The values come from running their own argparse (parse_args in
torchrun_main.py, with args_utils.check_args_torchrun_main) on a local
checkout of their repository. Their heavy imports (datasets, wandb,
bitsandbytes, ...) are replaced by empty stand-ins first: parse_args needs
none of them. Nothing of their code is copied into this repository; only the
command lines (facts about their interface) and the values are written.

    git clone <the authors' SubTrack repository> /tmp/SubTrack
    pip install torch
    python dev/reference/authors_args.py --authors_repo /tmp/SubTrack

Values that their main() derives after parse_args, for one process
(world_size 1), are derived here the same way and say so: the gradient
accumulation, and Adam's eps and betas, which come from the optimizer the
command line picks (torch.optim.Adam/AdamW for adam/adamw, their LowRankAdamW
for low_rank_adamw), read from those classes' signatures.
"""
import argparse
import importlib.abc
import importlib.machinery
import inspect
import os
import shlex
import subprocess
import sys
import types
from unittest import mock

# command lines of our own that lean on their defaults (not from their repo)
EXTRA_CASES = [
    ("defaults_60m", "ours: only the model and batch",
     "--model_config configs/llama_60m.json --batch_size 8"),
    ("accumulation_1b", "ours: gradient accumulation instead of a total batch",
     "--model_config configs/llama_1b.json --batch_size 4 --gradient_accumulation 4 --optimizer low_rank_adamw "
     "--subspace_update_method galore"),
    ("adamw_350m", "ours: full-rank AdamW with their defaults",
     "--model_config configs/llama_350m.json --batch_size 16 --total_batch_size 64 --optimizer AdamW --dtype bf16"),
]

# their flags whose value is ours to compare, by the same name; what is not
# compared, and why, is written into the file's header
NOT_COMPARED = {
    "beta1": "their --beta1 reaches only SGD and Adafactor; ours is Adam's beta1, compared below as the "
             "optimizer's own default",
    "save_dir": "their default holds the date and time; the prefix is compared",
    "subspace_update_method": "compared only when given: without it their low-rank optimizers raise",
}


class Stub(types.ModuleType):
    """a module whose every attribute is a MagicMock: enough to import code
    that only uses it later, at training time"""
    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = mock.MagicMock(name=f"{self.__name__}.{attr}")
        setattr(self, attr, value)
        return value


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """the last resort of the import system: any module that is not
    installed becomes a Stub"""
    def find_spec(self, fullname, path, target=None):
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return Stub(spec.name)

    def exec_module(self, module):
        pass


def script_command(text):
    """the arguments after torchrun_main.py in a shell command (continuation
    lines joined)"""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line)
        if "torchrun_main.py" in words:
            return words[words.index("torchrun_main.py") + 1:]
    raise ValueError("no torchrun_main.py command in the text")


def readme_command(readme):
    """the command of the README's example (the first torchrun block)"""
    start = readme.index("torchrun ")
    end = readme.index("```", start)
    return script_command(readme[start:end])


def derived_values(args, LowRankAdamW, torch):
    """what their main() derives for one process"""
    out = {}
    ga, total, bs = args.gradient_accumulation, args.total_batch_size, args.batch_size
    if total is not None and ga is None:
        ga = total // bs
    out["gradient_accumulation"] = ga
    out["total_batch_size"] = total
    name = args.optimizer.lower()
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "low_rank_adamw": LowRankAdamW}.get(name)
    if cls is not None:
        params = inspect.signature(cls.__init__).parameters
        betas = params["betas"].default
        out["eps"] = params["eps"].default
        out["beta1"], out["beta2"] = betas
    return out


def value_text(v):
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors_repo", required=True, help="a checkout of the authors' SubTrack repository")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "authors_args.txt"))
    opts = ap.parse_args()
    repo = os.path.abspath(opts.authors_repo)
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    import torch  # the real one: the optimizer signatures come from it
    sys.meta_path.append(StubFinder())
    sys.path.insert(0, repo)
    sys.argv = ["torchrun_main.py"]
    import torchrun_main
    from low_rank_torch import LowRankAdamW

    cases = []
    for name in sorted(os.listdir(os.path.join(repo, "scripts", "c4"))):
        if name.endswith(".sh"):
            with open(os.path.join(repo, "scripts", "c4", name)) as f:
                cases.append((name[:-3], f"scripts/c4/{name}", script_command(f.read())))
    with open(os.path.join(repo, "README.md")) as f:
        cases.append(("readme_1b", "their README's example (LLaMA 1B on C4)", readme_command(f.read())))
    for name, source, line in EXTRA_CASES:
        cases.append((name, source, line.split()))

    lines = [
        "# what the authors' torchrun_main.py makes of each command line: written by",
        f"# dev/reference/authors_args.py from their repository at commit {commit},",
        f"# with torch {torch.__version__} (torch.cuda.is_bf16_supported() = {torch.cuda.is_bf16_supported()},",
        "# which sets their --dtype default). do not edit; regenerate.",
        "# format: 'case NAME SOURCE', 'args ...', then 'expect FLAG VALUE' lines",
        "# ('expect_prefix' for a prefix), then 'end'. not compared:",
    ]
    for key, why in NOT_COMPARED.items():
        lines.append(f"#   {key}: {why}")
    for name, source, argv in cases:
        args = torchrun_main.parse_args(argv)
        values = {k: v for k, v in vars(args).items() if k not in NOT_COMPARED}
        values.update(derived_values(args, LowRankAdamW, torch))
        if args.subspace_update_method is not None:
            values["subspace_update_method"] = args.subspace_update_method
        values["optimizer"] = args.optimizer.lower()  # their code compares it lower-cased
        if values["dtype"] == "bf16":
            values["dtype"] = "bfloat16"  # their main() treats "bf16" and "bfloat16" alike
        lines.append(f"case {name} {source}")
        lines.append("args " + " ".join(argv))
        for key in sorted(values):
            lines.append(f"expect {key} {value_text(values[key])}")
        stem = os.path.basename(args.model_config)
        stem = stem[:-5] if stem.endswith(".json") else stem
        lines.append(f"expect_prefix save_dir checkpoints/{stem}-")
        lines.append("end")
    with open(opts.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {opts.out}: {len(cases)} command lines")


if __name__ == "__main__":
    main()

"""
Plots the CSV logs that train_llama_subtrack writes with --log_file into one PNG,
so runs can be compared: per run, the train loss as a light line (optionally
smoothed) and the validation loss as markers joined by a line, in one colour.

usage:
    python dev/plot_loss.py RUN1.csv [RUN2.csv ...] [--labels A B ...] \
        [--smooth N] [--title TEXT] [--out loss.png]

The log format is `step,train_loss,val_loss,lr,grad_norm,ms,tokens_per_s`, one
row per optimizer step, val_loss empty on steps without evaluation. A log that
a resumed run (--continue_from) appended to may lack the header or repeat some
steps; a missing header is taken to be the one above, and for a repeated step
the later row (the resumed run's) wins.
"""

import argparse
import csv
import math
import os
import sys

import matplotlib
matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

LOG_COLUMNS = ["step", "train_loss", "val_loss", "lr", "grad_norm", "ms", "tokens_per_s"]
RAW_TRAIN_ALPHA = 0.3       # the raw train curve stays in the background
SMOOTH_TRAIN_ALPHA = 0.8
FIGURE_SIZE = (8, 5)        # inches
FIGURE_DPI = 120


def fail(msg):
    print(f"plot_loss.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_float(text, path, line_no, column):
    """a float, or nan for an empty cell"""
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        fail(f"{path}:{line_no}: column {column} is '{text}', not a number; is this a --log_file CSV?")


def read_log(path):
    """returns (steps, train_loss, val_steps, val_loss) lists, sorted by step"""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        fail(f"cannot read {path} ({e.strerror})")
    rows = [(i + 1, r) for i, r in enumerate(rows) if r]  # 1-based line numbers, blank lines dropped
    if not rows:
        fail(f"{path} is empty; did the run write any step to --log_file?")
    columns = LOG_COLUMNS
    if not is_number(rows[0][1][0]):  # a header line, else a headerless (appended) log
        columns = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
        for needed in ("step", "train_loss", "val_loss"):
            if needed not in columns:
                fail(f"{path}: header has no '{needed}' column (got {','.join(columns)}); "
                     f"expected {','.join(LOG_COLUMNS)}")
    i_step, i_train, i_val = (columns.index(c) for c in ("step", "train_loss", "val_loss"))
    by_step = {}  # step -> (train, val); a later row for the same step replaces an earlier one
    for line_no, r in rows:
        if len(r) != len(columns):
            fail(f"{path}:{line_no}: {len(r)} columns, the header has {len(columns)}; "
                 f"the file is truncated or not a --log_file CSV")
        step = parse_float(r[i_step], path, line_no, "step")
        if math.isnan(step):
            fail(f"{path}:{line_no}: the step column is empty")
        by_step[int(step)] = (parse_float(r[i_train], path, line_no, "train_loss"),
                              parse_float(r[i_val], path, line_no, "val_loss"))
    if not by_step:
        fail(f"{path} has a header but no rows; did the run take a step?")
    steps = sorted(by_step)
    train = [by_step[s][0] for s in steps]
    val_steps = [s for s in steps if not math.isnan(by_step[s][1])]
    val = [by_step[s][1] for s in val_steps]
    return steps, train, val_steps, val


def trailing_mean(values, window):
    """mean over the last `window` finite values at each point (fewer at the start)"""
    out, buf = [], []
    for v in values:
        if not math.isnan(v):
            buf.append(v)
            if len(buf) > window:
                buf.pop(0)
        out.append(sum(buf) / len(buf) if buf else math.nan)
    return out


def main():
    ap = argparse.ArgumentParser(description="plot train/val loss from one or more --log_file CSVs")
    ap.add_argument("logs", nargs="+", help="CSV logs written by --log_file")
    ap.add_argument("--labels", nargs="+", help="legend label per log (default: the file names)")
    ap.add_argument("--smooth", type=int, default=1, help="trailing moving average of N steps on the train loss (1 = raw)")
    ap.add_argument("--title", default="loss", help="plot title")
    ap.add_argument("--out", default="loss.png", help="output PNG (default loss.png)")
    args = ap.parse_args()

    if args.labels is not None and len(args.labels) != len(args.logs):
        fail(f"{len(args.labels)} --labels for {len(args.logs)} logs; give one label per log")
    if args.smooth < 1:
        fail(f"--smooth {args.smooth}: the window must be at least 1 step")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        fail(f"cannot write {args.out}: directory {out_dir} does not exist")
    labels = args.labels or [os.path.splitext(os.path.basename(p))[0] for p in args.logs]

    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (path, label) in enumerate(zip(args.logs, labels)):
        steps, train, val_steps, val = read_log(path)
        color = colors[k % len(colors)]
        if args.smooth > 1:
            ax.plot(steps, train, color=color, alpha=RAW_TRAIN_ALPHA, linewidth=0.8)
            ax.plot(steps, trailing_mean(train, args.smooth), color=color, alpha=SMOOTH_TRAIN_ALPHA,
                    linewidth=1.2, label=f"{label} train (mean of {args.smooth})")
        else:
            ax.plot(steps, train, color=color, alpha=RAW_TRAIN_ALPHA + 0.2, linewidth=1.0, label=f"{label} train")
        if val_steps:  # a run without evaluation has only the train curve
            ax.plot(val_steps, val, color=color, marker="o", markersize=4, linewidth=1.8, label=f"{label} val")
        last_val = f", last val {val[-1]:.4f} at step {val_steps[-1]}" if val_steps else ", no val loss"
        print(f"{path}: {len(steps)} steps, last train {train[-1]:.4f}{last_val}")

    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax.set_title(args.title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(args.out, dpi=FIGURE_DPI)
    except OSError as e:
        fail(f"cannot write {args.out} ({e.strerror})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

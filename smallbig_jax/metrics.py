"""What a run writes about itself (process 0 only): TensorBoard scalars, a JSON-lines log and a PNG of the curves."""

from __future__ import annotations

import json
import logging
import os
import time

import jax
from matplotlib.figure import Figure
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

log = logging.getLogger(__name__)


class MetricWriter:
    """Scalars to `<workdir>/tensorboard` (TensorBoard event files) and `<workdir>/metrics.jsonl`.

    `resumed_at`: the step the run starts from (0: a fresh run); rows of later steps (written before a kill, about to
    be trained again, also by a run killed before its first checkpoint) and a line cut by the kill are dropped from
    `metrics.jsonl`, so each step has one row per split. Event files are append-only, so the new one starts with
    TensorBoard's restart marker (a `SessionLog.START` at step `resumed_at + 1`): TensorBoard then drops the earlier
    files' scalars from that step on, and shows each replayed step once."""

    def __init__(self, workdir: str, resumed_at: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._events = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if os.path.exists(self.path):
                self._drop_rows_after(resumed_at)
            self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._events.add_event(event_pb2.Event(wall_time=time.time(), step=resumed_at + 1, session_log=start))

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = [summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=float(v)) for k, v in scalars.items()]
        self._events.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        )
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **{k: float(v) for k, v in scalars.items()}}) + "\n")

    def _drop_rows_after(self, step: int) -> None:
        with open(self.path) as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                continue  # a line cut short by the kill
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str) -> str | None:
    """`<workdir>/curves.png`: training loss and accuracy, and validation top-1/top-5, against the step."""
    rows = read_metrics(workdir)
    if not rows or jax.process_index() != 0:
        return None
    fig = Figure(figsize=(11, 4))  # matplotlib's object API: no pyplot, no global backend to switch
    ax_loss, ax_acc = fig.subplots(1, 2)
    train = [r for r in rows if r["split"] == "train"]
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train top-1 (batch)", alpha=0.6)
    for split in sorted({r["split"] for r in rows} - {"train"}):
        evals = [r for r in rows if r["split"] == split and "top1" in r]
        if evals:
            ax_acc.plot([r["step"] for r in evals], [r["top1"] for r in evals], "o-", label=f"{split} top-1")
            ax_acc.plot([r["step"] for r in evals], [r["top5"] for r in evals], "s--", label=f"{split} top-5")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:  # a convenience: written at the end of a run, it must not hide what ended the run
        log.warning("curves not drawn: %s: %s", path, err.strerror or err)
        return None
    return path

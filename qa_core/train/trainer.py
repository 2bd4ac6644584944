"""Fine-tuning an encoder for extractive QA on SQuAD: the engine behind `docqa train`.

The objective is the usual SQuAD one: the mean of the cross-entropy of the gold start token and of the
gold end token, each a softmax over the window's real tokens (padding masked). Windows come from the
inference featurizer (`qa_core.train.data`). Batches are length-grouped: each epoch's windows are
shuffled with a seeded generator, cut into chunks of `sort_chunk_batches` batches, sorted by length
inside a chunk, split into batches and the batches of a chunk shuffled again, so batches are padded
little yet their lengths do not drift along the run.

A run is reproducible from its config: the data order of epoch `e` depends only on (seed, e), and a
checkpoint (`OUTPUT/checkpoints/step-N/`) holds the weights, the optimizer and scheduler states, the
torch RNG and the data position, so `resume=True` continues the very same run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from qa_core.config import QAConfig
from qa_core.errors import ConfigError, ModelLoadError, OutputError
from qa_core.evaluation.squad import load_squad
from qa_core.stages.batch import collate
from qa_core.stages.featurize import Featurizer
from qa_core.train.checkpoints import list_checkpoints, resume_point, save_final_model
from qa_core.train.config import TrainConfig, TrainResult
from qa_core.train.data import TrainWindow, build_train_windows, load_ambiguous_ids
from qa_core.train.evaluation import evaluate_model, hardware_summary

logger = logging.getLogger(__name__)


def plan_epoch(
    lengths: npt.NDArray[np.int64], epoch: int, config: TrainConfig
) -> list[npt.NDArray[np.int64]]:
    """The micro-batches (window indices) of one epoch, length-grouped; depends only on (seed, epoch)."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = config.batch_size * config.sort_chunk_batches
    planned: list[npt.NDArray[np.int64]] = []
    for begin in range(0, len(order), chunk):
        part = order[begin : begin + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        group = [part[i : i + config.batch_size] for i in range(0, len(part), config.batch_size)]
        planned.extend(group[j] for j in rng.permutation(len(group)))
    return planned


def total_steps_of(n_micro_batches: int, config: TrainConfig) -> int:
    """Optimizer steps of the run: `max_steps`, or `epochs` passes over the micro-batches."""
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * n_micro_batches / config.grad_accum))


def qa_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    attention_mask: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
) -> torch.Tensor:
    """Mean of the start and end cross-entropies, softmax over real tokens only (fp32)."""
    padding = attention_mask == 0  # (B, P)
    start = start_logits.float().masked_fill(padding, -1e4)
    end = end_logits.float().masked_fill(padding, -1e4)
    return (F.cross_entropy(start, starts) + F.cross_entropy(end, ends)) / 2


def _linear_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _micro_batches(
    lengths: npt.NDArray[np.int64], config: TrainConfig, epoch: int, index: int
) -> Iterator[tuple[int, int, npt.NDArray[np.int64]]]:
    """(epoch, index after this batch, window indices) from a data position on, epoch after epoch."""
    while True:
        planned = plan_epoch(lengths, epoch, config)
        for i in range(index, len(planned)):
            yield epoch, i + 1, planned[i]
        epoch, index = epoch + 1, 0


def _training_windows(tokenizer: Any, train_path: str, config: TrainConfig) -> tuple[list[TrainWindow], Any]:
    """The labelled windows of the training file, with their counts."""
    drop: frozenset[str] = frozenset()
    side_file = train_path.replace(".json", ".ambiguous-offsets.json", 1)
    if Path(side_file).is_file():
        ambiguous = load_ambiguous_ids(side_file)
        logger.info(
            "%d ambiguous-offset answers listed in %s: %s",
            len(ambiguous),
            side_file,
            "dropped" if config.drop_ambiguous else "kept",
        )
        drop = ambiguous if config.drop_ambiguous else frozenset()
    windows, stats = build_train_windows(
        load_squad(train_path), Featurizer(tokenizer, config.featurize), config.max_train_examples, drop
    )
    if not windows:
        raise ConfigError("train: no training windows (see the counts logged above)")
    return windows, stats


def train(
    base_dir: str,
    train_path: str,
    output_dir: str,
    config: TrainConfig,
    *,
    resume: bool = False,
    eval_path: str | None = None,
    eval_limit: int | None = None,
    command: str | None = None,
    stop_after_steps: int | None = None,
    eval_config: QAConfig | None = None,
) -> TrainResult:
    """Fine-tunes `base_dir` on a SQuAD training file and writes the model to `output_dir`.

    Args:
        base_dir: Base encoder (or QA checkpoint) directory with a fast tokenizer.
        train_path: SQuAD training file (.json, .json.gz or .zip).
        output_dir: Output folder: the final model, `train.log`, `checkpoints/`, `README.md`.
        config: Hyperparameters.
        resume: Continue from the latest checkpoint in `output_dir/checkpoints`.
        eval_path: A SQuAD file to evaluate the final model on (with docqa's own inference).
        eval_limit: Evaluate on the first N questions only.
        command: The command line, recorded in the model card.
        stop_after_steps: Stop after this many steps in this process (saving a checkpoint), as if
            interrupted; the run is later continued with `resume=True`.
        eval_config: The inference config `eval_path` is answered with (its model is replaced by the
            trained one); default: the defaults with `config.featurize`.

    Raises:
        ConfigError: A bad config, `resume` without any checkpoint, or a resumption whose config differs
            from the checkpoint's.
        InputError: A missing or malformed training file.
        ModelLoadError: A base directory without a usable tokenizer.
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    output = Path(output_dir)
    try:
        output.mkdir(parents=True, exist_ok=True)
        log_handler = logging.FileHandler(output / "train.log", encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write the model to --output {output_dir}: {err.strerror or err}") from err
    log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log_handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("train config: %s", json.dumps(config.to_dict()))
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_dir)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load the tokenizer of --base {base_dir}: {err}") from err
        windows, stats = _training_windows(tokenizer, train_path, config)
        total = total_steps_of(math.ceil(len(windows) / config.batch_size), config)
        state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "index": 0,
            "tokens": 0,
            "seconds": 0.0,
            "digest": "",
            "total_steps": total,
            "windows": len(windows),
            "config": config.to_dict(),
        }
        checkpoint, state = resume_point(output, state) if resume else (None, state)
        torch.manual_seed(config.seed)  # the QA head's initialisation and dropout
        model = AutoModelForQuestionAnswering.from_pretrained(str(checkpoint or base_dir)).to(device)
        pad_id = int(tokenizer.pad_token_id or 0)
        trainer = _Trainer(model, windows, config, state, output=output, pad_id=pad_id)
        if checkpoint is not None:
            trainer.load_checkpoint(checkpoint)
        final_loss = trainer.run(stop_after_steps)
        finished = state["step"] >= total
        scores = None
        if finished:
            save_final_model(model, tokenizer, output, base_dir)
            if eval_path is not None:
                inference = eval_config or QAConfig(featurize=config.featurize)
                scores = evaluate_model(str(output), eval_path, inference, eval_limit)
            info = {
                "base": base_dir,
                "train": train_path,
                "eval": eval_path,
                "eval_limit": eval_limit,
                "command": command,
                "state": {k: v for k, v in state.items() if k != "config"},
                "config": config.to_dict(),
                "data": stats.to_dict(),
                "eval_scores": scores,
                "hardware": hardware_summary(device, config),
            }
            (output / "train_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            logger.info("model written to %s", output)
        return TrainResult(
            str(output),
            state["step"],
            total,
            state["tokens"],
            state["seconds"],
            final_loss,
            state["digest"],
            finished,
            stats.to_dict(),
            scores,
        )
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


class _Trainer:
    """The optimisation loop of one run; `state` (step, data position, counters) is updated in place."""

    def __init__(
        self,
        model: Any,
        windows: list[TrainWindow],
        config: TrainConfig,
        state: dict[str, Any],
        *,
        output: Path,
        pad_id: int,
    ) -> None:
        self.model, self.windows, self.config, self.state = model, windows, config, state
        self.output, self.pad_id = output, pad_id
        self.device = next(model.parameters()).device
        self.lengths = np.array([w.feature.length for w in windows], dtype=np.int64)
        self.optimizer = _optimizer(model, config)
        total = state["total_steps"]
        self.scheduler = _linear_schedule(self.optimizer, int(config.warmup_ratio * total), total)
        self.takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
        self.interval: list[float] = [0.0, 0, 0, time.perf_counter()]  # loss sum, steps, tokens, start

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Restores the optimizer, scheduler and RNG states (the weights were loaded from it)."""
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        rng = torch.load(checkpoint / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])

    def save_checkpoint(self) -> None:
        """Writes `checkpoints/step-N` (written aside, then renamed), keeping the last few."""
        final = self.output / "checkpoints" / f"step-{self.state['step']}"
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.model.save_pretrained(partial)
        torch.save(self.optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), partial / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, partial / "rng.pt")
        (partial / "trainer_state.json").write_text(json.dumps(self.state, indent=2), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in list_checkpoints(self.output)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint saved: %s", final)

    def run(self, stop_after_steps: int | None) -> float:
        """Optimizer steps until the schedule's end (or `stop_after_steps`); the last logged loss."""
        config, state = self.config, self.state
        total = state["total_steps"]
        stream = _micro_batches(self.lengths, config, state["epoch"], state["index"])
        self.model.train()
        last_loss, steps_here = float("nan"), 0
        every = config.checkpoint_every
        with tqdm(
            total=total,
            initial=state["step"],
            desc="train",
            unit="step",
            disable=not config.progress,
            file=sys.stderr,
            mininterval=5.0,
            dynamic_ncols=True,
        ) as bar:
            while state["step"] < total and (stop_after_steps is None or steps_here < stop_after_steps):
                self._step(stream)
                steps_here += 1
                bar.update(1)
                if state["step"] % config.log_every == 0 or state["step"] == total:
                    last_loss, rate = self._log()
                    bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{rate:.0f}")
                if state["step"] < total and every and state["step"] % every == 0:
                    self.save_checkpoint()
        if state["step"] < total and not (every and state["step"] % every == 0):
            self.save_checkpoint()  # stopped early: keep what was done
        if self.interval[1]:
            last_loss = self.interval[0] / self.interval[1]
        return last_loss

    def _step(self, stream: Iterator[tuple[int, int, npt.NDArray[np.int64]]]) -> None:
        config, state, device = self.config, self.state, self.device
        started = time.perf_counter()
        step_loss = 0.0
        digest = hashlib.sha256(state["digest"].encode())  # chained per step, so resumable
        for _ in range(config.grad_accum):
            epoch, index, picked = next(stream)
            digest.update(picked.tobytes())
            chosen = [self.windows[i] for i in picked]
            batch = collate([w.feature for w in chosen], self.pad_id, config.pad_to_multiple_of)
            inputs = {
                "input_ids": torch.from_numpy(batch.input_ids).to(device),
                "attention_mask": torch.from_numpy(batch.attention_mask).to(device),
            }
            if self.takes_types:
                inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids).to(device)
            starts = torch.tensor([w.start_position for w in chosen], device=device)
            ends = torch.tensor([w.end_position for w in chosen], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = self.model(**inputs)
            loss = qa_loss(out.start_logits, out.end_logits, inputs["attention_mask"], starts, ends)
            (loss / config.grad_accum).backward()  # type: ignore[no-untyped-call]
            step_loss += float(loss.detach()) / config.grad_accum
            self.interval[2] += batch.real_tokens
            state["tokens"] += batch.real_tokens
            state["epoch"], state["index"] = epoch, index
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["seconds"] += time.perf_counter() - started
        state["digest"] = digest.hexdigest()
        self.interval[0] += step_loss
        self.interval[1] += 1

    def _log(self) -> tuple[float, float]:
        """Logs the interval since the last log line; returns its mean loss and tokens/s."""
        loss_sum, steps, tokens, start = self.interval
        seconds = max(time.perf_counter() - start, 1e-9)
        loss, rate = loss_sum / steps, tokens / seconds
        state = self.state
        eta = (state["total_steps"] - state["step"]) * seconds / steps
        logger.info(
            "step %d/%d epoch %d loss %.4f lr %.3g tokens/s %.0f steps/s %.3f elapsed %.0fs ETA %.0fs",
            state["step"],
            state["total_steps"],
            state["epoch"],
            loss,
            self.scheduler.get_last_lr()[0],
            rate,
            steps / seconds,
            state["seconds"],
            eta,
        )
        self.interval = [0.0, 0, 0, time.perf_counter()]
        return loss, rate

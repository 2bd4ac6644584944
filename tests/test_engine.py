"""The in-process engine on a tiny random BERT and on a fake model with known answers."""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from qa_core.config import BatchConfig, FeaturizeConfig, QAConfig, load_config
from qa_core.engine.host import FEATURIZE_CHUNK_ROWS, FIRST_CHUNK_ROWS, RowPreparer, SortBufferer
from qa_core.engine.loop import QAEngine
from qa_core.records import Answer, Reason, Record, Rejection
from qa_core.runtime.torch_runner import TorchRunner

UNICODE_CONTEXTS = [
    "東京は日本の首都です。 the capital city of japan is tokyo.",
    "ภาษาไทยไม่มีช่องว่าง the river and the church",
    "مرحبا بالعالم the school of music is north of the river",
    "family 👨\u200d👩\u200d👧\u200d👦 and flags 🏳\ufe0f\u200d🌈 were there in 1999",
    "cafe\u0301 re\u0301sume\u0301 nai\u0308ve the team won",
    "col1\tcol2\tcol3\r\nthe second line\r\nthe third line",
    "zero\u200bwidth soft\u00adhyphen \ufeffbom the end",
]


def make_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = [
        "the",
        "city",
        "river",
        "church",
        "school",
        "team",
        "music",
        "war",
        "state",
        "north",
        "south",
        "history",
        "film",
    ]
    rows = []
    for i in range(n):
        context = " ".join(rng.choice(words) for _ in range(rng.randint(5, 400)))
        if i % 5 == 0:
            context = rng.choice(UNICODE_CONTEXTS) + " " + context
        rows.append({"id": f"q{i}", "question": "what is the " + rng.choice(words) + "?", "context": context})
    return rows


def answers_of(engine: QAEngine, rows: list[dict[str, Any]]) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    for result in engine.answer_rows(rows):
        assert isinstance(result, Answer)
        out[str(result.id)] = result
    return out


def test_same_answers_for_batch_sizes_and_order(tiny_model: TorchRunner) -> None:
    rows = make_rows(60)
    base = load_config([], ["decode.top_k=2"])
    results = []
    for windows in (1, 7, 64):
        cfg = dataclasses.replace(base, batch=BatchConfig(max_batch_windows=windows))
        results.append(answers_of(QAEngine(tiny_model, cfg), rows))
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    results.append(answers_of(QAEngine(tiny_model, base), shuffled))
    # A small sort buffer changes batch composition completely.
    small_buffer = dataclasses.replace(base, batch=BatchConfig(sort_buffer_windows=3, max_batch_windows=5))
    results.append(answers_of(QAEngine(tiny_model, small_buffer), rows))
    # Synchronous (no prefetch thread) and several buffers prefetched ahead.
    for depth in (0, 3):
        batching = BatchConfig(sort_buffer_windows=9)
        runtime = dataclasses.replace(base.runtime, prefetch_buffers=depth)
        prefetched = dataclasses.replace(base, batch=batching, runtime=runtime)
        results.append(answers_of(QAEngine(tiny_model, prefetched), rows))
    first = results[0]
    for other in results[1:]:
        assert other.keys() == first.keys()
        for key, answer in first.items():
            assert (other[key].answer, other[key].start, other[key].end) == (
                answer.answer,
                answer.start,
                answer.end,
            )
            assert other[key].score == pytest.approx(answer.score, rel=1e-4, abs=1e-6)
            assert other[key].logit_score == pytest.approx(answer.logit_score, rel=1e-4, abs=1e-4)


def test_answers_are_exact_substrings_on_unicode(tiny_model: TorchRunner) -> None:
    cfg = load_config([], ["decode.top_k=5"])
    rows = [
        {"id": i, "question": q, "context": c}
        for i, (q, c) in enumerate((q, c) for c in UNICODE_CONTEXTS for q in ("what?", "the river church"))
    ]
    for result in QAEngine(tiny_model, cfg).answer_rows(rows):
        assert isinstance(result, Answer)
        context = rows[result.id]["context"]
        assert result.answer == context[result.start : result.end]
        assert result.answer.strip(), "answer must not be blank"
        for entry in result.top_k:
            assert entry.answer == context[entry.start : entry.end]


class MarkerModel(torch.nn.Module):
    """Start logit high on token `start_id`, end logit high on `end_id`: a model with a known answer."""

    def __init__(self, start_id: int, end_id: int) -> None:
        super().__init__()
        self.start_id, self.end_id = start_id, end_id

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> SimpleNamespace:
        start = (input_ids == self.start_id).float() * 10.0
        end = (input_ids == self.end_id).float() * 10.0
        return SimpleNamespace(start_logits=start, end_logits=end)


def marker_model(tokenizer: Any) -> TorchRunner:
    ids = [tokenizer.get_vocab()[word] for word in ("river", "church")]
    return TorchRunner(MarkerModel(*ids), tokenizer, torch.device("cpu"), torch.float32, "marker", "test")


def test_long_context_answer_across_window_boundary(tiny_model: TorchRunner) -> None:
    model = marker_model(tiny_model.tokenizer)
    cfg = dataclasses.replace(
        QAConfig(),
        featurize=FeaturizeConfig(max_seq_len=64, doc_stride=24, min_context_tokens=32, max_question_len=8),
    )
    filler = ["the"] * 200
    # Place "river city church" so it straddles the end of the first window (tokens ~50-60).
    words = [*filler[:50], "river", "city", "school", "church", *filler[50:]]
    context = " ".join(words)
    engine = QAEngine(model, cfg)
    (result,) = list(engine.answer_rows([{"id": "long", "question": "what?", "context": context}]))
    assert isinstance(result, Answer)
    assert engine.stats.windows >= 5
    assert result.answer == "river city school church"
    assert result.answer == context[result.start : result.end]


def test_rejections_and_question_truncation(tiny_model: TorchRunner) -> None:
    cfg = load_config([], ["featurize.max_context_chars=1000"])
    rows = [
        {"id": None, "question": "q", "context": "c"},
        {"id": 1, "question": None, "context": "the city"},
        {"id": 2, "question": "   ", "context": "the city"},
        {"id": 3, "question": "what", "context": "\t \r\n"},
        {"id": 4, "question": 5, "context": "the city"},
        {"id": 5, "question": "what", "context": "the " * 400},
        {"id": 6, "question": "what " * 500, "context": "the city"},
        {"id": 7, "question": "\x00\x01", "context": "the city"},
        {"id": 8, "question": "what", "context": "\x00\x01\x02"},
    ]
    results = list(QAEngine(tiny_model, cfg).answer_rows(rows))
    assert len(results) == len(rows)
    reasons = {r.id: r.reason for r in results if isinstance(r, Rejection)}
    assert reasons == {
        None: Reason.MISSING_ID,
        1: Reason.MISSING_QUESTION,
        2: Reason.EMPTY_QUESTION,
        3: Reason.EMPTY_CONTEXT,
        4: Reason.INVALID_QUESTION_TYPE,
        5: Reason.CONTEXT_TOO_LONG,
        7: Reason.EMPTY_QUESTION,
        8: Reason.NO_CONTEXT_TOKENS,
    }
    long_question = next(r for r in results if r.id == 6)
    assert isinstance(long_question, Answer)  # cut to max_question_len, still answered


def test_duplicate_ids_are_answered_separately(tiny_model: TorchRunner) -> None:
    model = marker_model(tiny_model.tokenizer)
    rows = [
        {"id": "dup", "question": "what?", "context": "the river church the"},
        {"id": "dup", "question": "what?", "context": "a school river music church"},
    ]
    results = list(QAEngine(model, QAConfig()).answer_rows(rows))
    assert [r.answer for r in results if isinstance(r, Answer)] == ["river church", "river music church"]


class PoisonModel(MarkerModel):
    """Fails on any batch holding the token `poison_id`."""

    def __init__(self, start_id: int, end_id: int, poison_id: int) -> None:
        super().__init__(start_id, end_id)
        self.poison_id = poison_id

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> SimpleNamespace:
        if bool((input_ids == self.poison_id).any()):
            raise RuntimeError("poisoned batch")
        return super().forward(input_ids, attention_mask, token_type_ids)


def test_poison_row_rejects_only_itself(tiny_model: TorchRunner) -> None:
    tok = tiny_model.tokenizer
    model = TorchRunner(
        PoisonModel(*[tok.get_vocab()[word] for word in ("river", "church", "film")]),
        tok,
        torch.device("cpu"),
        torch.float32,
        "poison",
        "test",
    )
    rows = [{"id": i, "question": "what?", "context": "the river church"} for i in range(20)]
    rows[13] = {"id": 13, "question": "what?", "context": "the film river church"}
    engine = QAEngine(model, QAConfig())
    results = list(engine.answer_rows(rows))
    rejected = [r for r in results if isinstance(r, Rejection)]
    assert [(r.id, r.reason) for r in rejected] == [(13, Reason.MODEL_ERROR)]
    assert "poisoned batch" in rejected[0].detail
    assert sum(isinstance(r, Answer) for r in results) == 19
    assert engine.stats.batch_splits > 0


def test_windows_cover_a_long_context_to_its_last_token(tiny_model: TorchRunner) -> None:
    """Every window the tokenizer's overflow gives is kept (tokenizers < 0.23.3 returned at most three)."""
    from qa_core.config import FeaturizeConfig
    from qa_core.stages.featurize import Featurizer

    config = FeaturizeConfig(max_seq_len=32, doc_stride=8, min_context_tokens=16, max_question_len=8)
    featurizer = Featurizer(tiny_model.tokenizer, config)
    context = " ".join(f"river{i % 7} church" for i in range(200))
    (windows,) = featurizer.featurize([Record("k", "id", "where?", context)])
    assert isinstance(windows, list) and len(windows) > 10
    assert int(windows[-1].char_ends.max()) == len(context.rstrip())
    assert [w.window_index for w in windows] == list(range(len(windows)))


def test_prefetch_is_on_for_a_gpu_and_off_for_a_cpu_unless_configured(tiny_model: TorchRunner) -> None:
    auto = load_config([], [])
    assert QAEngine(tiny_model, auto).prefetch_depth == 0
    on_gpu = dataclasses.replace(tiny_model, device=torch.device("cuda"))  # never run: only the device
    assert QAEngine(on_gpu, auto).prefetch_depth == 1
    assert QAEngine(tiny_model, load_config([], ["runtime.prefetch_buffers=2"])).prefetch_depth == 2


def test_cuda_forward_leaves_out_cudnn_attention(tiny_model: TorchRunner) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from qa_core.runtime.torch_runner import CUDA_ATTENTION_BACKENDS
    from qa_core.stages.batch import collate
    from qa_core.stages.featurize import Featurizer

    assert SDPBackend.CUDNN_ATTENTION not in CUDA_ATTENTION_BACKENDS
    assert SDPBackend.EFFICIENT_ATTENTION in CUDA_ATTENTION_BACKENDS  # serves padding masks in bf16
    # The allow-list is a valid sdpa_kernel argument and the model runs under it (here on the CPU).
    (windows,) = Featurizer(tiny_model.tokenizer, QAConfig().featurize).featurize(
        [Record("r", "r", "what?", "the river flows past the church")]
    )
    assert isinstance(windows, list)
    batch = collate(windows, tiny_model.pad_token_id, 8)
    plain = tiny_model.forward(batch)
    with sdpa_kernel(CUDA_ATTENTION_BACKENDS):
        allowed = tiny_model.forward(batch)
    assert torch.equal(plain[0], allowed[0])


def test_sort_buffers_do_not_depend_on_how_many_rows_come_at_a_time(tiny_model: TorchRunner) -> None:
    """A buffer closes after the row that fills it: a featurized chunk and rows one by one (Beam) agree."""
    config = dataclasses.replace(QAConfig(), batch=BatchConfig(sort_buffer_windows=7, max_batch_windows=3))
    preparer = RowPreparer(tiny_model.tokenizer, config)
    prepared = preparer.prepare(make_rows(60, seed=4), 0)

    def buffers(sizes: list[int]) -> list[list[list[tuple[str, int]]]]:
        bufferer, out, at = SortBufferer(config), [], 0
        for size in sizes:
            out += bufferer.add(prepared[at : at + size])
            at += size
        last = bufferer.flush()
        return [[[(f.row_key, f.window_index) for f in g] for g in b.groups] for b in [*out, last] if b]

    by_row = buffers([1] * len(prepared))
    assert len(by_row) > 3
    assert buffers([len(prepared)]) == by_row
    assert buffers([17, 1, 30, 12]) == by_row


def test_tokenizer_calls_hold_about_one_sort_buffer_of_windows(tiny_model: TorchRunner) -> None:
    """The first call takes FIRST_CHUNK_ROWS rows; later ones as many rows as fill a sort buffer, capped."""
    config = dataclasses.replace(
        QAConfig(),
        batch=BatchConfig(sort_buffer_windows=40),
        featurize=FeaturizeConfig(max_seq_len=32, doc_stride=4, min_context_tokens=8),
    )
    preparer = RowPreparer(tiny_model.tokenizer, config)
    assert preparer.chunk_rows == FIRST_CHUNK_ROWS
    long_rows = [{"id": i, "question": "what is it?", "context": "the river " * 80} for i in range(300)]
    sizes = [len(chunk) for chunk in preparer.prepare_chunks(long_rows)]
    windows = len(preparer.prepare(long_rows[:1], 0)[0].windows)  # type: ignore[union-attr]
    assert windows > 4 and sizes[0] == FIRST_CHUNK_ROWS and sum(sizes) == 300
    assert set(sizes[1:-1]) == {40 // windows}  # about one sort buffer of windows per call
    preparer.prepare([{"id": 0, "question": "what?", "context": "the river"}] * 5, 0)
    assert preparer.chunk_rows == 40  # one window per row: 40 rows (at most FEATURIZE_CHUNK_ROWS)
    big = dataclasses.replace(config, batch=BatchConfig(sort_buffer_windows=10**6))
    wide = RowPreparer(tiny_model.tokenizer, big)
    wide.prepare([{"id": 0, "question": "what?", "context": "the river"}] * 5, 0)
    assert wide.chunk_rows == FEATURIZE_CHUNK_ROWS

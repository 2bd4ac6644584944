"""The tokenizer contract: exactly what docqa uses of a model's tokenizer.

Featurization (`qa_core.stages.featurize`), the model checks (`qa_core.runtime.fit`) and the runners
(`qa_core.runtime.runner.ModelRunner.tokenizer`) see a tokenizer only through `Tokenizer`. Both loaders'
tokenizers satisfy it: transformers' fast tokenizer (`PreTrainedTokenizerFast`) and docqa's
`qa_core.runtime.loaders.native.NativeTokenizer` over a checkpoint's tokenizer.json.

Windows are cut from the Rust backend (`backend_tokenizer`, a `tokenizers.Tokenizer`): featurization
serializes it and encodes with private copies, whose offsets give each token's characters. It lives in
`stages/` (not `runtime/`) because featurization, a pure stage, depends on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokenizers import Tokenizer as BackendTokenizer


class Tokenizer(Protocol):
    """A fast (tokenizers-backed) tokenizer of a QA model: its backend and its special token ids."""

    @property
    def is_fast(self) -> bool:
        """True: it has a `tokenizers` backend, so encodings carry character offsets."""
        ...

    @property
    def backend_tokenizer(self) -> BackendTokenizer:
        """The Rust tokenizer: normalizer, pre-tokenizer, model and the pair template (post-processor)."""
        ...

    @property
    def cls_token_id(self) -> int | None:
        """The CLS token's id (where the null answer is scored), None when the tokenizer has none."""
        ...

    @property
    def pad_token_id(self) -> int | None:
        """The id written into padding positions, None when the tokenizer sets none."""
        ...

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """Special tokens the pair template adds to one text (`pair=False`) or a (question, context) pair."""
        ...

    @property
    def vocab_size(self) -> int:
        """Tokens of the vocabulary without added tokens (ids below it are the model's base vocabulary)."""
        ...

    def get_vocab(self) -> dict[str, int]:
        """Token to id, added tokens included."""
        ...

    def __len__(self) -> int:
        """Tokens of the vocabulary, added tokens included."""
        ...

"""Decoders: what ``parity generate`` asks of a language model, one step at a time.

Why a contract of its own and not a :class:`parity.contract.source.Source`: a source runs one
forward pass and yields every activation; generation is a loop of forward passes that carry a KV
cache from one to the next, and what users see drift is the token picked at each step. A decoder
plugin therefore hands the core a *session* with one method that matters, :meth:`DecoderSession.forward`
(tokens and a cache in, next-token logits and the grown cache out); the core owns the loop, the
teacher forcing and the statistics, so every framework is driven the same way.

Two optional methods let the core say *which layer* flipped a token: :meth:`DecoderSession.trace`
(each decoder layer's input and output at every position) and :meth:`DecoderSession.run_layer`
(one layer alone on given inputs, the local error of ``--diagnose``). A session that cannot do them
(an ONNX graph without hidden states) returns ``None``; the core then compares the KV cache per layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parity.contract.capability import NumberFormat
from parity.contract.errors import ParityError

__all__ = ["Decoder", "DecoderSession", "LayerTrace", "Step"]


@dataclass
class Step:
    """One forward pass: ``logits`` ``[T, vocab]`` float32 for the ``T`` tokens fed, and the cache after them.

    ``cache`` is the session's own object (a transformers cache, a list of ONNX arrays), handed back
    unchanged to the next :meth:`DecoderSession.forward`; :meth:`DecoderSession.cache_arrays` turns it
    into numpy for comparison.
    """

    logits: Any
    cache: Any = None


@dataclass
class LayerTrace:
    """One decoder layer's hidden states, ``[T, hidden]`` float32 each: what it read and what it wrote."""

    name: str
    input: Any
    output: Any


@dataclass
class DecoderSession:
    """A loaded decoder (base class; plugins subclass it).

    ``layers``: the decoder layers' names in order (``model.layers.0`` ...), the same on the reference
    and the target when they come from the same model, so the core can pair them by name.
    """

    name: str = "decoder"
    layers: list[str] = field(default_factory=list)
    vocab_size: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def forward(self, tokens: Any, cache: Any = None) -> Step:
        """Feed ``tokens`` (int64 ``[T]``) after the prefix ``cache`` holds (``None``: an empty prefix)."""
        raise NotImplementedError

    def cache_arrays(self, cache: Any) -> list[tuple[Any, Any]]:
        """The cache as ``(keys, values)`` float32 numpy arrays per layer, ``[heads, positions, head_dim]``."""
        raise NotImplementedError

    def trace(self, tokens: Any) -> list[LayerTrace] | None:
        """Each decoder layer's input and output over ``tokens`` (one pass, no cache); ``None``: not available."""
        return None

    def run_layer(self, tokens: Any, index: int, hidden: Any) -> Any | None:
        """Layer ``index`` alone on ``hidden`` (``[T, hidden]``, the reference's input to it) over
        ``tokens``' positions: its output ``[T, hidden]`` float32; ``None``: not available."""
        return None

    def close(self) -> None:
        """Release what the session holds (GPU memory, ONNX Runtime sessions)."""


class Decoder:
    """A registered decoder kind (``torch``, ``torch-bf16``, ``ort-int8`` ...): loads sessions.

    ``precision`` is a short label of what the target computes in (``fp32``, ``bf16``, ``int8``,
    ``w4a8`` ...), shown to users. ``number_format`` is the typed answer the core reads (the report's
    ``target_format``), as :attr:`parity.contract.source.Source.number_format`: a decoder may set it;
    left unset it is ``precision`` read as a :class:`NumberFormat` (``mixed`` when it is none).
    ``uses_calibration``: ``load`` calibrates on the ``calibration`` sequences (an int8 target), so
    the report says which sequences those were.
    """

    name: str = "decoder"
    precision: str = "fp32"
    description: str = ""
    uses_calibration: bool = False
    _number_format: NumberFormat | None = None

    @property
    def number_format(self) -> NumberFormat:
        if self._number_format is not None:
            return self._number_format
        try:
            return NumberFormat(self.precision)
        except ValueError:
            return NumberFormat.MIXED

    @number_format.setter
    def number_format(self, value: NumberFormat | str) -> None:
        self._number_format = NumberFormat(value)

    def available(self, device: str = "cpu") -> str | None:
        """``None`` when this decoder can run here on ``device``, else why not (one line)."""
        return None

    def require(self, device: str = "cpu") -> None:
        """Refuse, naming this decoder and why, where :meth:`available` says it cannot run: what every
        ``load`` does first, so a missing library or GPU is one line and not a traceback mid-load."""
        why = self.available(device)
        if why:
            raise ParityError(f"decoder {self.name}: {why}")

    def load(self, model: str, *, device: str = "cpu", calibration: list[list[int]] | None = None,
             workdir: str | None = None) -> DecoderSession:
        """Load ``model`` (a transformers folder, ``file.py:factory``, an ``.onnx`` decoder; what a plugin
        accepts is its own) on ``device``. ``calibration``: token sequences for an int8 target.
        ``workdir``: where derived files (exports, converted models) may be written."""
        raise NotImplementedError

"""Decoders ``ort``, ``ort-fp16``, ``ort-int8`` for ``parity generate``: an ONNX decoder with past
key/values (as Optimum or ``torch.onnx.export`` writes it) stepped in ONNX Runtime.

Given a transformers folder or ``file.py:factory`` instead of an ``.onnx`` file, the model is exported
first (:func:`parity.lib.onnx.decoder.export_decoder`, cached in the work folder); fp16 is the same
conversion as the ``ort-fp16`` source (fp32 inputs and outputs, so the cache crosses the boundary in
fp32), int8 is static QDQ quantization of the MatMuls calibrated on the prompts.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.decoder import Decoder, DecoderSession, Step
from parity.contract.errors import ParityError


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OrtDecoderSession(DecoderSession):
    def __init__(self, sess: Any, name: str, path: Path) -> None:
        ins = {i.name: i for i in sess.get_inputs()}
        past = sorted((n for n in ins if n.startswith("past_key_values.")),
                      key=lambda n: (int(n.split(".")[1]), n.split(".")[2] != "key"))
        if "input_ids" not in ins:
            raise ParityError(f"ONNX decoder {path}: no input named input_ids (inputs: {', '.join(ins)}). Note: "
                              f"parity generate reads Optimum's names: input_ids, attention_mask, position_ids, "
                              f"past_key_values.N.key|value")
        self.n = len(past) // 2
        presents = [o.name for o in sess.get_outputs() if o.name.startswith("present")]
        logits = [o.name for o in sess.get_outputs() if o.name == "logits"] or [sess.get_outputs()[0].name]
        shapes = [ins[n].shape for n in past[:1]]
        heads, hd = (_dim(shapes[0][1]), _dim(shapes[0][3])) if shapes else (None, None)
        if past and (heads is None or hd is None):
            raise ParityError(f"ONNX decoder {path}: the past key/value inputs have symbolic heads or head "
                              f"size ({shapes[0]}); parity needs them fixed to build an empty cache")
        vocab = _dim(sess.get_outputs()[0].shape[-1]) or 0
        super().__init__(name=name, layers=[f"layers.{i}" for i in range(self.n)], vocab_size=vocab,
                         meta={"path": str(path)})
        self.sess, self.past, self.presents, self.logits = sess, past, presents, logits[0]
        self.heads, self.hd = heads, hd
        self.has_mask, self.has_pos = "attention_mask" in ins, "position_ids" in ins
        self.kv_dtype = np.float16 if "float16" in (ins[past[0]].type if past else "") else np.float32

    def feed(self, tokens: Any, cache: Any = None) -> dict[str, np.ndarray]:
        ids = np.asarray(tokens, dtype=np.int64)[None]
        p = 0 if cache is None else cache[0].shape[2]
        f: dict[str, np.ndarray] = {"input_ids": ids}
        if self.has_mask:
            f["attention_mask"] = np.ones((1, p + ids.shape[1]), np.int64)
        if self.has_pos:
            f["position_ids"] = np.arange(p, p + ids.shape[1], dtype=np.int64)[None]
        for j, n in enumerate(self.past):
            f[n] = (np.zeros((1, self.heads, 0, self.hd), self.kv_dtype) if cache is None else cache[j])
        return f

    def forward(self, tokens: Any, cache: Any = None) -> Step:
        from parity.lib.onnx.session import run_session

        out = run_session(self.sess, [self.logits, *self.presents], self.feed(tokens, cache), f"decoder {self.name}")
        return Step(logits=np.asarray(out[0][0], dtype=np.float32), cache=out[1:])

    def cache_arrays(self, cache: Any) -> list[tuple[Any, Any]]:
        return [(np.asarray(cache[2 * i][0], np.float32), np.asarray(cache[2 * i + 1][0], np.float32))
                for i in range(len(cache) // 2)]

    def close(self) -> None:
        self.sess = None


class OrtDecoder(Decoder):
    """An ONNX decoder with past key/values in ONNX Runtime at ``precision`` (fp32, fp16, int8)."""

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision
        self.description = f"ONNX decoder with past key/values in ONNX Runtime, {precision}"
        self.uses_calibration = precision == "int8"  # static QDQ, calibrated on the prompts

    def available(self, device: str = "cpu") -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install 'parity[onnx]')"
        return None

    def load(self, model: str, *, device: str = "cpu", calibration: list[list[int]] | None = None,
             workdir: str | None = None) -> DecoderSession:
        from parity.lib.onnx.decoder import decoder_to_fp16
        from parity.lib.onnx.session import make_session, session_options

        self.require(device)
        work = Path(workdir or tempfile.mkdtemp(prefix="parity-generate-"))
        path = Path(model)
        if path.suffix != ".onnx":
            path = self._export(model, work)
        elif not path.is_file():
            raise ParityError(f"ONNX decoder {model}: no such file")
        if self.precision == "fp16":
            path = decoder_to_fp16(path)
        elif self.precision == "int8":
            path = self._int8(path, work, calibration or [])
        so, providers = session_options({}, device)
        sess = make_session(path, so, providers, work, f"decoder {path.name}")
        return OrtDecoderSession(sess, self.name, path)

    def _export(self, model: str, work: Path) -> Path:
        import hashlib

        from parity.lib.causal_lm import load_causal_lm
        from parity.lib.onnx.decoder import export_decoder

        m = load_causal_lm(model)
        h = hashlib.sha256()
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        h.update(m.config.to_json_string().encode())
        out = work / "ort" / f"decoder-{h.hexdigest()[:16]}.onnx"
        return out if out.is_file() else export_decoder(m, out)

    def _int8(self, path: Path, work: Path, calibration: list[list[int]]) -> Path:
        from parity.lib.onnx.convert import to_int8
        from parity.lib.onnx.session import make_session, session_options

        if not calibration:
            raise ParityError(f"decoder {self.name}: int8 needs calibration prompts; none were given")
        so, providers = session_options({}, "cpu")
        probe = OrtDecoderSession(make_session(path, so, providers, work, path.name), self.name, path)
        feeds = [probe.feed(seq) for seq in calibration[:16]]
        return to_int8(path, work, feeds, {"int8_op_types": ["MatMul"]})

"""The shared rules of diagnosis: format limits, culprit shares, local-value keys, a value's error.

Why a module of its own: :mod:`parity.core.diagnose` (local error, range tracing) and
:mod:`parity.core.culprits` (ranking the layers that cause the loss) both apply them; kept here,
the culprit ranking imports nothing of ``diagnose`` and the two no longer import each other
(``diagnose.find_culprits`` hands over to ``culprits``).
"""
from __future__ import annotations

from parity.contract.report import MetricInfo

#: largest finite value and smallest normal value of each low-precision format
FORMATS: dict[str, dict[str, float]] = {
    "float16": {"max": 65504.0, "tiny": 6.103515625e-05, "mantissa_bits": 10},
    "bfloat16": {"max": 3.3895313892515355e38, "tiny": 1.1754943508222875e-38, "mantissa_bits": 7},
    "float32": {"max": 3.4028234663852886e38, "tiny": 1.1754943508222875e-38, "mantissa_bits": 23},
}
#: a layer is a culprit when its local error is at least this share of its accumulated error
CAUSE_SHARE = 0.5
#: a layer whose local error is below this share of the error the threshold allows is never a culprit
#: (the same floor as ``parity fix``'s: keeping such a layer in high precision cannot move the outputs)
NEGLIGIBLE_SHARE = 0.01
#: a magnitude gap at least this wide, above the median magnitude, separates a tensor's useful
#: values from a huge-magnitude minority above it (a mask constant such as float32's minimum or -1e9)
SENTINEL_GAP = 1e3
#: local-value key: target elements that are the same-signed infinity where the reference holds a
#: finite value beyond the target format's range (saturation; harmless when the consumers match)
SATURATED = "_saturated"
#: local-value key: reference elements left out of the useful part (above ``useful_bound``)
MASKED = "_masked"


def error_of(value: float | None, info: MetricInfo) -> float | None:
    """The metric's own error for ``value`` (0 = no loss, ``inf`` for NaN); ``None`` for no value."""
    return None if value is None else info.error(value)

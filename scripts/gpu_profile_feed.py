"""Where a warm per-feed comparison spends its time on CUDA (torch vs torch-fp16): cProfile of an
in-process run over a small folder, top functions by cumulative and own time. Used by
scripts/gpu_scale_check.sh; prints to stdout."""
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _models import EncoderShape, write_spec  # noqa: E402

from parity.core.compare import CompareSettings, compare  # noqa: E402

shape = EncoderShape(depth=12, width=768, heads=12, seq=128, batch=int(os.environ.get("BATCH", "8")))
with tempfile.TemporaryDirectory() as tmp:
    spec = write_spec(tmp, shape)
    d = Path(tmp) / "feeds"
    d.mkdir()
    for i in range(6):
        np.save(d / f"{i}.npy", np.random.default_rng(i).standard_normal(shape.input_shape).astype(np.float32))
    s = CompareSettings(model=spec, ref="torch", target="torch-fp16", device="cuda", inputs=str(d),
                        workdir=str(Path(tmp) / "w"), limit=1)
    compare(s)  # warm: model loads, CUDA context, numba
    s.limit = None
    prof = cProfile.Profile()
    prof.enable()
    compare(s)
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("cumulative").print_stats(30)
    st.sort_stats("tottime").print_stats(25)
    print(out.getvalue())

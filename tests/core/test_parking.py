"""Parking activations (parity.lib.parking): in memory within the budget, a few spill files beyond it.

Why: the auto matcher holds the whole reference stream while the target runs; one file per tensor
cost ~1 ms each (the largest step of a warm run), and holding everything in memory does not scale.
"""
import gc
import mmap
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from parity.contract.errors import ParityError
from parity.contract.matcher import MatchContext, Matcher
from parity.lib.parking import MIN_DEFAULT_BUDGET, MAX_DEFAULT_BUDGET, Parking, default_budget
from parity.contract.records import Activation, Pair


def _acts(rng, n, nbytes, dtype=np.float32):
    k = nbytes // np.dtype(dtype).itemsize
    return [Activation(f"l{i}", rng.standard_normal(k).astype(dtype), order=i) for i in range(n)]


def _mapped(arr):
    """Whether ``arr``'s memory is a file mapping (its chain of bases ends at an mmap)."""
    while isinstance(arr, np.ndarray):
        arr = arr.base
    return isinstance(arr.obj if isinstance(arr, memoryview) else arr, mmap.mmap)


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_within_budget_keeps_arrays_in_memory_without_copy_or_file(tmp_path, rng):
    acts = _acts(rng, 10, 100 << 10)
    with Parking(budget=2 << 20, spill_dir=tmp_path) as p:
        parked = [p.park(a) for a in acts]
        # the producer hands its arrays over (see the module docstring): kept as they are
        assert all(q.array is a.array for q, a in zip(parked, acts))
        assert p.dir is None and not list(tmp_path.iterdir())
        assert p.stats.files_created == 0 and p.stats.spilled_bytes == 0
        assert p.stats.held_bytes == p.stats.peak_held_bytes == 10 * (100 << 10)


def test_views_and_strided_arrays_are_copied_so_they_do_not_pin_a_larger_buffer(rng):
    big = rng.standard_normal((64, 1024)).astype(np.float32)
    with Parking(budget=1 << 30) as p:
        row = p.park(Activation("row", big[3]))  # contiguous, but a view of a 64x larger array
        col = p.park(Activation("col", big[:, 5]))  # strided
        whole = p.park(Activation("whole", big.reshape(-1)))  # a view of the same size: nothing pinned
        assert row.array.base is None and np.shares_memory(whole.array, big)
        assert not np.shares_memory(col.array, big) and col.array.flags.c_contiguous
        np.testing.assert_array_equal(row.array, big[3])
        np.testing.assert_array_equal(col.array, big[:, 5])
        assert p.stats.copied_arrays == 2


def test_beyond_budget_spills_500_tensors_into_one_file(tmp_path, rng):
    acts = _acts(rng, 500, 100 << 10)  # 49 MiB against a 1 MiB budget
    with Parking(budget=1 << 20, spill_dir=tmp_path) as p:
        parked = [p.park(a) for a in acts]
        in_memory = [q for q in parked if not _mapped(q.array)]
        assert len(in_memory) == 10  # 10 x 100 KiB fit 1 MiB, the 11th does not
        assert p.stats.files_created == 1 and len(_files(tmp_path)) == 1
        assert p.stats.spilled_arrays == 490 and p.stats.spilled_bytes == 490 * (100 << 10)
        assert p.stats.peak_held_bytes <= 1 << 20
        for q, a in zip(parked, acts):
            assert q.name == a.name and q.order == a.order
            assert q.array.dtype == a.array.dtype and q.array.shape == a.array.shape
            assert q.array.tobytes() == a.array.tobytes()  # bit for bit
        assert not parked[-1].array.flags.writeable
        with pytest.raises(ValueError):
            parked[-1].array[0] = 1.0


def test_files_grow_with_bytes_not_with_tensors(tmp_path, rng):
    # 8 MiB segments: 40 tensors of 1 MiB make 5-6 files; 4000 tensors of 10 KiB make 5-6 too
    for n, size in ((40, 1 << 20), (4000, 10 << 10)):
        with Parking(budget=0, spill_dir=tmp_path, segment_bytes=8 << 20) as p:
            parked = [p.park(a) for a in _acts(rng, n, size)]
            assert 5 <= p.stats.files_created <= 6, (n, p.stats)
            assert len(_files(tmp_path)) == p.stats.files_created
            assert np.array_equal(parked[n // 2].array, parked[n // 2].array)
        assert not list(tmp_path.iterdir())


def test_an_array_larger_than_a_segment_gets_its_own_file_and_the_open_segment_stays(tmp_path, rng):
    small = _acts(rng, 3, 64 << 10)
    huge = Activation("huge", rng.standard_normal(3 << 20).astype(np.float32))  # 12 MiB > 4 MiB segment
    with Parking(budget=0, spill_dir=tmp_path, segment_bytes=4 << 20) as p:
        a = p.park(small[0])
        h = p.park(huge)
        b = [p.park(x) for x in small[1:]]
        assert p.stats.files_created == 2  # the small ones share the first segment
        for q, x in zip([a, *b], small):
            np.testing.assert_array_equal(q.array, x.array)
        np.testing.assert_array_equal(h.array, huge.array)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int64", "bool", "complex64", "uint8"])
def test_every_dtype_and_shape_comes_back_bit_for_bit(tmp_path, rng, dtype):
    shapes = [(), (0,), (1,), (3, 5, 7), (2, 1, 4, 1)]
    arrays = [(rng.standard_normal(s) * 100).astype(dtype) for s in shapes]
    arrays.append(np.array([np.nan, -np.inf, -0.0], dtype=np.float32))
    with Parking(budget=0, spill_dir=tmp_path) as p:
        for a in arrays:
            q = p.park(Activation("x", a)).array
            assert q.shape == a.shape and q.dtype == a.dtype
            assert q.tobytes() == a.tobytes()


def test_release_and_garbage_collection_free_the_budget(tmp_path, rng):
    a0, a1, a2, a3 = _acts(rng, 4, 256 << 10)
    with Parking(budget=512 << 10, spill_dir=tmp_path) as p:
        p1, p2 = p.park(a0), p.park(a1)
        assert p.stats.held_bytes == 512 << 10
        p.release(p1)
        p.release(p1)  # twice counts once
        assert p.stats.held_bytes == 256 << 10
        p3 = p.park(a2)  # fits again: no spill
        assert p3.array is a2.array and p.stats.spilled_bytes == 0
        del p2, a1  # dropping the last reference to a parked array gives its share back
        gc.collect()
        assert p.stats.held_bytes == 256 << 10
        p4 = p.park(a3)
        assert p4.array is a3.array and p.stats.files_created == 0
        assert p.stats.peak_held_bytes == 512 << 10


def test_a_memory_mapped_array_is_kept_and_counts_nothing(tmp_path, rng):
    a = rng.standard_normal(50_000).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    with Parking(budget=0, spill_dir=tmp_path / "spill") as p:
        q = p.park(Activation("a", mm))
        assert q.array is mm and p.stats.held_bytes == 0 and p.stats.files_created == 0


def test_close_removes_the_folder_and_views_stay_readable(tmp_path, rng):
    acts = _acts(rng, 20, 100 << 10)
    p = Parking(budget=0, spill_dir=tmp_path)
    parked = [p.park(a) for a in acts]
    folder = p.dir
    assert folder.is_dir() and folder.parent == tmp_path
    p.close()
    assert not list(tmp_path.iterdir())
    assert parked[7].array.tobytes() == acts[7].array.tobytes()  # unlinked, mapped until dropped
    with pytest.raises(ParityError, match="closed"):
        p.park(acts[0])


def test_a_full_disk_is_a_parity_error(tmp_path, rng):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    from parity.lib import parking

    p = Parking(budget=0, spill_dir=tmp_path)
    seg = parking._Segment.__new__(parking._Segment)  # a segment whose writes fail like a full disk
    seg.size, seg.used, seg.fd = 1 << 30, 0, os.open("/dev/full", os.O_WRONLY)
    p._fds.append(seg.fd)
    p._current = seg
    with pytest.raises(ParityError, match="cannot spill.*--max-memory"):
        p.park(_acts(rng, 1, 1 << 16)[0])
    os.close(seg.fd)


def test_default_budget_is_a_quarter_of_available_memory_bounded():
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    want = min(max(avail // 4, MIN_DEFAULT_BUDGET), MAX_DEFAULT_BUDGET)
    assert abs(default_budget() - want) <= 0.1 * want  # available memory moves between the two reads
    assert MIN_DEFAULT_BUDGET <= default_budget() <= MAX_DEFAULT_BUDGET


class _Holder(Matcher):
    """Parks every reference record, then pairs by position: exercises ctx.parking through Matcher.match."""

    name = "holder"

    def pairs(self, ref, target, ctx=None):
        held = [ctx.parking.park(r) for r in ref]
        for r, t in zip(held, target):
            yield Pair(r, t, "holder", 1.0)


def test_match_context_parking_is_lazy_and_closed_when_the_stream_ends(tmp_path, rng):
    refs, tgts = _acts(rng, 30, 100 << 10), _acts(rng, 30, 100 << 10)
    ctx = MatchContext(spill_dir=str(tmp_path), max_memory=1 << 20)
    assert ctx.parking_stats is None
    pairs = list(Matcher.match(_Holder(), iter(refs), iter(tgts), None, ctx))
    assert len(pairs) == 30 and ctx.parking_stats.files_created == 1
    assert ctx.parking_stats.spilled_arrays == 20
    assert not list(tmp_path.iterdir())  # closed when the stream ended
    assert all(p.ref.array.tobytes() == r.array.tobytes() for p, r in zip(pairs, refs))


def test_a_pair_stream_closed_early_removes_the_spill_files(tmp_path, rng):
    ctx = MatchContext(spill_dir=str(tmp_path), max_memory=0)
    stream = Matcher.match(_Holder(), iter(_acts(rng, 10, 100 << 10)), iter(_acts(rng, 10, 100 << 10)), None, ctx)
    next(stream)
    assert len(list(tmp_path.iterdir())) == 1
    stream.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("how", ["exception", "SIGINT"])
def test_an_interrupted_process_leaves_no_spill_files(tmp_path, how):
    """Ctrl-C (KeyboardInterrupt anywhere, even outside the matcher) or an error: the folder goes at exit."""
    script = textwrap.dedent(f"""
        import os, signal, sys, numpy as np
        from parity.lib.parking import Parking
        from parity.contract.records import Activation
        p = Parking(budget=0, spill_dir={str(tmp_path)!r})
        held = [p.park(Activation(str(i), np.ones(50_000, np.float32))) for i in range(5)]
        assert p.dir.is_dir()
        print("spilled", flush=True)
        if {how!r} == "SIGINT":
            os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("boom")
    """)
    # SIGINT as a terminal delivers it, even where this test runs with SIGINT ignored (a background job)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "spilled" in r.stdout, r.stderr
    assert ("KeyboardInterrupt" if how == "SIGINT" else "boom") in r.stderr
    assert r.returncode != 0
    assert not list(tmp_path.iterdir())


def test_a_hard_kill_leaves_one_recognizable_folder(tmp_path):
    """Documented limit: SIGKILL cannot clean up; what it leaves is one parity-park-* folder, not loose files."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from parity.lib.parking import Parking
        from parity.contract.records import Activation
        p = Parking(budget=0, spill_dir={str(tmp_path)!r})
        x = p.park(Activation("a", np.ones(50_000, np.float32)))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith("parity-park-")

"""plan_capture_steps: batched capture in consecutive graph steps, without recomputation."""
import numpy as np
import onnx
from onnx import TensorProto, helper

from parity.lib.onnx.graph import plan_capture_steps, step_model


def _chain(n: int = 6) -> onnx.ModelProto:
    """x -> Relu -> Add(skip from x) -> Relu ... : every step reads the tensor crossing the cut."""
    nodes, prev = [], "x"
    for i in range(n):
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
        nodes.append(helper.make_node("Add", [f"r{i}", "x"], [f"a{i}"], name=f"add{i}"))
        prev = f"a{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_steps_run_every_node_once_and_hand_on_what_crosses_the_cut():
    m = _chain()
    wanted = [o for n in m.graph.node for o in n.output]
    batches = [wanted[i:i + 3] for i in range(0, len(wanted), 3)]
    steps = plan_capture_steps(m, batches)
    ran = [i for s in steps for i in s.nodes]
    assert sorted(ran) == list(range(len(m.graph.node)))  # each node exactly once
    assert all("x" in s.inputs for s in steps)  # the skip input is read by every step
    for k, s in enumerate(steps[:-1]):
        assert set(s.hand_on) <= set(steps[k + 1].inputs) | {t for later in steps[k + 1:] for t in later.inputs}


def test_steps_reproduce_the_whole_run():
    import onnxruntime as ort

    m = _chain()
    wanted = [o for n in m.graph.node for o in n.output]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    whole = dict(zip(wanted, _run(m, wanted, {"x": x}, ort)))
    live, got = {"x": x}, {}
    for s in plan_capture_steps(m, [wanted[i:i + 4] for i in range(0, len(wanted), 4)]):
        vals = dict(zip(s.outputs, _run(step_model(m, s, live), s.outputs, {t: live[t] for t in s.inputs}, ort)))
        live.update((t, vals[t]) for t in s.hand_on)
        got.update((t, vals[t] if t in vals else live[t]) for t in s.wanted)
        for t in s.release:
            live.pop(t, None)
    assert list(got) == wanted
    for t in wanted:
        np.testing.assert_array_equal(got[t], whole[t])


def _run(model, names, feed, ort):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.add().name = t
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feed)

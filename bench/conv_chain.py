"""A chain of identical convolutions as dense ONNX Conv against CodebookConv on the same float32 weights, per library.

Builds one model of ``--nodes`` convolutions (C -> C channels, or ``--cin`` -> C for the first; depthwise with
``--depthwise``; ``--alternate`` makes every second node a 1x1 convolution, as in a depthwise-separable block), each
followed by ``--activation``: once with ONNX Conv nodes (onnxruntime's optimiser makes them NCHWc Conv nodes with
the activation fused and reorders at the ends) and once with CodebookConv nodes reading the same weights as float32
constants, blocked between them (``nchwc_input`` / ``nchwc_output``, as PackWeightsPass marks a blocked region), one
CodebookConv session per library of ``--libraries``. The sessions alternate in one process on one onnxruntime thread;
prints the median process CPU time per run of each and, per library, the difference per node and the ratio. Outputs
are checked against the dense model's (5e-4 relative).

    python bench/conv_chain.py --channels 16 --size 112 --kernel 3 --depthwise --nodes 4 \
        --libraries /path/main/libonnxcomp_ops.so,/path/branch/libonnxcomp_ops.so
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcomp


def chain_model(args, custom: bool) -> onnx.ModelProto:
    """The chain with ONNX Conv (custom False) or CodebookConv nodes; weights from a fixed seed."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    x = "x"
    for i in range(args.nodes):
        depthwise = args.depthwise if not args.alternate else i % 2 == 0
        kernel = args.kernel if (not args.alternate or depthwise) else 1
        cin = args.cin if (args.cin and i == 0) else args.channels
        scale = 0.3 if depthwise else 1 / np.sqrt(cin * kernel * kernel)
        w = (rng.standard_normal((args.channels, 1 if depthwise else cin, kernel, kernel)) * scale).astype(np.float32)
        b = (rng.standard_normal(args.channels) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        stride = args.stride if i == 0 else 1
        attrs = dict(pads=[kernel // 2] * 4, strides=[stride, stride], group=args.channels if depthwise else 1)
        y = f"y{i}"
        if custom:
            extra = {"activation": args.activation} if args.activation else {}
            if i > 0:
                extra["nchwc_input"] = 1
            if i < args.nodes - 1:
                extra["nchwc_output"] = 1
            nodes.append(helper.make_node("CodebookConv", [x, f"w{i}", f"b{i}"], [y], domain="ai.onnxcomp",
                                          **attrs, **extra))
        else:
            conv_out = y + "c" if args.activation else y
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [conv_out], **attrs))
            if args.activation:
                nodes.append(helper.make_node(args.activation, [conv_out], [y]))
        x = y
    shape = [args.batch, args.cin or args.channels, args.size, args.size]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnxcomp", 1)],
                             ir_version=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cin", type=int, default=0, help="input channels of the first node (0: --channels)")
    parser.add_argument("--size", type=int, default=14, help="input height and width")
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--stride", type=int, default=1, help="stride of the first node")
    parser.add_argument("--depthwise", action="store_true")
    parser.add_argument("--alternate", action="store_true", help="depthwise and 1x1 nodes in turn")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--activation", default="HardSwish", help="empty: none")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--libraries", default="", help="comma-separated custom-op libraries (empty: installed)")
    args = parser.parse_args()
    libraries = args.libraries.split(",") if args.libraries else [onnxcomp.runtime.library_path()]
    feeds = {"x": np.random.default_rng(0).standard_normal(
        (args.batch, args.cin or args.channels, args.size, args.size)).astype(np.float32)}
    sessions = []
    for custom, library in [(False, libraries[0])] + [(True, path) for path in libraries]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.register_custom_ops_library(library)
        sessions.append(ort.InferenceSession(chain_model(args, custom).SerializeToString(), options,
                                             providers=["CPUExecutionProvider"]))
    outputs = [session.run(None, feeds)[0] for session in sessions]
    for output in outputs[1:]:
        np.testing.assert_allclose(output, outputs[0], rtol=5e-4, atol=5e-4 * float(np.abs(outputs[0]).max()))
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(args.repeats):
        for spent, session in zip(times, sessions):
            start = time.process_time()
            session.run(None, feeds)
            spent.append(time.process_time() - start)
    medians = [float(np.median(t)) * 1e6 for t in times]
    print(f"{args.nodes} x {'depthwise' if args.depthwise else 'conv'} {args.kernel}x{args.kernel}"
          f"{' alternating with 1x1' if args.alternate else ''}, C {args.cin or args.channels} -> {args.channels}, "
          f"{args.size} x {args.size}, stride {args.stride}, batch {args.batch}: dense {medians[0]:.1f} us; " +
          "; ".join(f"library {j + 1} {m:.1f} us ({(m - medians[0]) / args.nodes:+.2f} us/node, "
                    f"{m / medians[0]:.3f})" for j, m in enumerate(medians[1:])))


if __name__ == "__main__":
    main()

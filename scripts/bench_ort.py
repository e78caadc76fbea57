"""onnxruntime side of the inference benchmark (scripts/bench.sh); never used by impasto.

Builds the `johnson` transformation network as an ONNX graph from an impasto/pytorch-examples
safetensors file (reflection Pad + Conv, InstanceNormalization, nearest Resize), or loads an
.onnx file as it is, and prints one JSON line per size with the median time.
"""
import argparse, json, statistics, sys, time
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
from safetensors.numpy import load_file


def johnson_graph(weights_path):
    w = load_file(weights_path)
    nodes, inits = [], []
    counter = [0]

    def name(p):
        counter[0] += 1
        return f"{p}_{counter[0]}"

    def const(arr, n=None):
        n = n or name("c")
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def conv(x, prefix, k, stride, upsample=False):
        if upsample:
            y = name("up")
            nodes.append(helper.make_node("Resize", [x, "", const(np.array([1, 1, 2, 2], np.float32))], [y],
                                          mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
            x = y
        p = k // 2
        y = name("pad")
        nodes.append(helper.make_node("Pad", [x, const(np.array([0, 0, p, p, 0, 0, p, p], np.int64))], [y], mode="reflect"))
        z = name("conv")
        nodes.append(helper.make_node("Conv", [y, const(w[prefix + ".conv2d.weight"], prefix + ".w"), const(w[prefix + ".conv2d.bias"], prefix + ".b")],
                                      [z], kernel_shape=[k, k], strides=[stride, stride]))
        return z

    def inorm(x, prefix, relu):
        y = name("in")
        nodes.append(helper.make_node("InstanceNormalization", [x, const(w[prefix + ".weight"], prefix + ".g"), const(w[prefix + ".bias"], prefix + ".be")], [y], epsilon=1e-5))
        if relu:
            z = name("relu")
            nodes.append(helper.make_node("Relu", [y], [z]))
            return z
        return y

    x = "image"
    x = inorm(conv(x, "conv1", 9, 1), "in1", True)
    x = inorm(conv(x, "conv2", 3, 2), "in2", True)
    x = inorm(conv(x, "conv3", 3, 2), "in3", True)
    for r in range(1, 6):
        h = inorm(conv(x, f"res{r}.conv1", 3, 1), f"res{r}.in1", True)
        h = inorm(conv(h, f"res{r}.conv2", 3, 1), f"res{r}.in2", False)
        y = name("add")
        nodes.append(helper.make_node("Add", [x, h], [y]))
        x = y
    x = inorm(conv(x, "deconv1", 3, 1, True), "in4", True)
    x = inorm(conv(x, "deconv2", 3, 1, True), "in5", True)
    x = conv(x, "deconv3", 9, 1)
    nodes.append(helper.make_node("Identity", [x], ["stylized"]))
    g = helper.make_graph(nodes, "johnson",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("stylized", TensorProto.FLOAT, [1, 3, "h", "w"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help=".safetensors (johnson) or .onnx")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", help="write the output for a 1x3x68x92 ramp to this .npy")
    a = ap.parse_args()
    model = open(a.model, "rb").read() if a.model.endswith(".onnx") else johnson_graph(a.model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    for s in [int(v) for v in a.sizes.split(",")]:
        x = (np.random.default_rng(s).random((1, 3, s, s), dtype=np.float32) * 255).astype(np.float32)
        for _ in range(a.warmup):
            sess.run(None, {inp: x})
        ms = []
        for _ in range(a.runs):
            t = time.perf_counter()
            sess.run(None, {inp: x})
            ms.append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"engine": f"onnxruntime {ort.__version__}", "size": s, "median_ms": statistics.median(ms), "min_ms": min(ms), "runs": ms, "threads": a.threads}), flush=True)


if __name__ == "__main__":
    main()

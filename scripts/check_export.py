"""Run an exported .onnx in onnxruntime on an input and compare with impasto's output.
usage: check_export.py MODEL.onnx IN.safetensors IMPASTO_OUT.safetensors  (exit 1 if rel. error >= 1e-3)"""
import sys
import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file

onnx_path, inp, ours = sys.argv[1:4]
x = load_file(inp)["input"]
y_ours = load_file(ours)["output"]
so = ort.SessionOptions()
so.intra_op_num_threads = 2
sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
y = sess.run(None, {"image": x})[0]
err = float(np.linalg.norm(y - y_ours) / np.linalg.norm(y))
print(f"{onnx_path}: relative error vs impasto {err:.2e} (max abs {float(np.abs(y - y_ours).max()):.2e})")
sys.exit(0 if err < 1e-3 else 1)

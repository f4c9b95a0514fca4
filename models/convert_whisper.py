#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model (model.bin) into two ONNX graphs, with numpy and onnx only.

    convert_whisper.py OUT_DIR MODEL_BIN [MODEL_BIN_PART...]

The model.bin may come in parts (the registry packages split it in two): they are read in order
and joined in memory.

Writes OUT_DIR/encoder.onnx and OUT_DIR/decoder.onnx (fp32; Whisper degrades badly under dynamic
int8, so the weights are only upcast from fp16). No PyTorch, no network: the weights come from the
model.bin that deploy/setup.sh reassembles from the registry packages listed in
models/requirements.txt.

encoder.onnx
  in   mel      f32 [B, 80, F]            log-mel frames (F even; the real length, not 3000)
  out  cross_k  f32 [L, B, H, F/2, Dh]    each decoder layer's cross-attention keys
       cross_v  f32 [L, B, H, F/2, Dh]    and values, so the decoder never recomputes them

decoder.onnx
  in   tokens   i64 [B, N]                the new tokens (the prompt, then one at a time)
       self_k   f32 [L, B, H, P, Dh]      self-attention cache of the P tokens already decoded
       self_v   f32 [L, B, H, P, Dh]      (P = 0 on the first call)
       cross_k, cross_v                   from the encoder
  out  logits   f32 [B, V]                for the last of the N tokens
       new_self_k, new_self_v  f32 [L, B, H, P+N, Dh]

The graphs are built deterministically: the same model.bin and onnx version give the same bytes,
so models/manifest.toml can pin their SHA-256.
"""

import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(paths):
    """Return {name: ndarray} with aliases resolved, from a CTranslate2 model.bin (in parts)."""
    chunks = []
    for path in paths:
        with open(path, "rb") as f:
            chunks.append(f.read())
    data = b"".join(chunks)
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string():
        nonlocal pos
        (n,) = take("H")
        s = data[pos : pos + n].rstrip(b"\0").decode()
        pos += n
        return s

    (version,) = take("I")
    if version < 4 or version > 6:
        raise SystemExit(f"unsupported CTranslate2 model version {version}")
    spec = string()
    if spec != "WhisperSpec":
        raise SystemExit(f"not a Whisper model: spec {spec!r}")
    take("I")  # spec revision
    (count,) = take("I")
    variables = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        dims = take("I" * rank) if rank else ()
        (dtype,) = take("B")
        (nbytes,) = take("I")
        if dtype not in DTYPES:
            raise SystemExit(f"{name}: unknown dtype {dtype}")
        array = np.frombuffer(data, dtype=DTYPES[dtype], count=nbytes // np.dtype(DTYPES[dtype]).itemsize, offset=pos)
        pos += nbytes
        variables[name] = array.reshape(dims)
    (aliases,) = take("I")
    for _ in range(aliases):
        alias = string()
        target = string()
        variables[alias] = variables[target]
    return variables


class Graph:
    """A small builder: named nodes, fp32 initializers, unique intermediate names."""

    def __init__(self, weights):
        self.weights = weights
        self.nodes = []
        self.inits = {}
        self.counter = 0

    def tmp(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def op(self, op_type, inputs, hint=None, outputs=1, **attrs):
        names = [self.tmp(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, name, array):
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def weight(self, key, transpose=False):
        name = key + (".T" if transpose else "")
        if name not in self.inits:
            w = self.weights[key].astype(np.float32)
            self.const(name, w.T if transpose else w)
        return name

    def ints(self, values):
        return self.const("i64_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values, dtype=np.int64))

    def scalar(self, value):
        return self.const(f"f32_{value!r}".replace(".", "p").replace("-", "m"), np.array(value, dtype=np.float32))

    def linear(self, x, prefix):
        y = self.op("MatMul", [x, self.weight(prefix + "/weight", transpose=True)])
        if prefix + "/bias" in self.weights:
            y = self.op("Add", [y, self.weight(prefix + "/bias")])
        return y

    def layer_norm(self, x, prefix):
        return self.op(
            "LayerNormalization", [x, self.weight(prefix + "/gamma"), self.weight(prefix + "/beta")], axis=-1, epsilon=1e-5
        )

    def gelu(self, x):
        # The erf form, as Whisper uses it: 0.5 x (1 + erf(x / sqrt 2)).
        e = self.op("Erf", [self.op("Mul", [x, self.scalar(float(1 / np.sqrt(2)))])])
        return self.op("Mul", [self.op("Mul", [x, self.scalar(0.5)]), self.op("Add", [e, self.scalar(1.0)])])

    def heads(self, x, num_heads, head_dim):
        """[B, T, H*Dh] -> [B, H, T, Dh]"""
        r = self.op("Reshape", [x, self.ints([0, 0, num_heads, head_dim])])
        return self.op("Transpose", [r], perm=[0, 2, 1, 3])

    def merge_heads(self, x, d_model):
        """[B, H, T, Dh] -> [B, T, H*Dh]"""
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.ints([0, 0, d_model])])

    def attention(self, q, k, v, head_dim, mask=None):
        """softmax(q kᵀ / √Dh + mask) v over [B, H, *, Dh]."""
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("Mul", [self.op("MatMul", [q, kt]), self.scalar(float(1 / np.sqrt(head_dim)))])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        return self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])

    def split3(self, x, d_model):
        return self.op("Split", [x, self.ints([d_model] * 3)], outputs=3, axis=-1)

    def ffn(self, x, prefix):
        h = self.layer_norm(x, prefix + "/layer_norm")
        h = self.gelu(self.linear(h, prefix + "/linear_0"))
        return self.op("Add", [x, self.linear(h, prefix + "/linear_1")])


def save(graph, inputs, outputs, path, doc):
    g = helper.make_graph(graph.nodes, os.path.basename(path), inputs, outputs, list(graph.inits.values()))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="parloir-convert-whisper")
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=False)
    tmp = path + ".tmp"
    onnx.save_model(model, tmp)
    os.replace(tmp, path)


def build_encoder(w, layers, heads, d_model, dec_layers):
    g = Graph(w)
    hd = d_model // heads
    x = g.op("Conv", ["mel", g.weight("encoder/conv1/weight"), g.weight("encoder/conv1/bias")], pads=[1, 1], strides=[1])
    x = g.gelu(x)
    x = g.op("Conv", [x, g.weight("encoder/conv2/weight"), g.weight("encoder/conv2/bias")], pads=[1, 1], strides=[2])
    x = g.gelu(x)
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [B, S, D]
    # Position encodings sliced to the S frames present.
    s = g.op("Gather", [g.op("Shape", [x]), g.const("i64_1s", np.array([1], dtype=np.int64))])
    pos = g.op("Slice", [g.weight("encoder/position_encodings/encodings"), g.ints([0]), s, g.ints([0])])
    x = g.op("Add", [x, pos])
    for i in range(layers):
        p = f"encoder/layer_{i}"
        h = g.layer_norm(x, p + "/self_attention/layer_norm")
        q, k, v = g.split3(g.linear(h, p + "/self_attention/linear_0"), d_model)
        a = g.attention(g.heads(q, heads, hd), g.heads(k, heads, hd), g.heads(v, heads, hd), hd)
        x = g.op("Add", [x, g.linear(g.merge_heads(a, d_model), p + "/self_attention/linear_1")])
        x = g.ffn(x, p + "/ffn")
    x = g.layer_norm(x, "encoder/layer_norm")
    ks, vs = [], []
    for i in range(dec_layers):
        kv = g.linear(x, f"decoder/layer_{i}/attention/linear_1")
        k, v = g.op("Split", [kv, g.ints([d_model, d_model])], outputs=2, axis=-1)
        ks.append(g.op("Unsqueeze", [g.heads(k, heads, hd), g.ints([0])]))
        vs.append(g.op("Unsqueeze", [g.heads(v, heads, hd), g.ints([0])]))
    g.nodes.append(helper.make_node("Concat", ks, ["cross_k"], axis=0))
    g.nodes.append(helper.make_node("Concat", vs, ["cross_v"], axis=0))
    cross = ["L", "B", heads, "S", hd]
    return g, [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["B", 80, "F"])], [
        helper.make_tensor_value_info("cross_k", TensorProto.FLOAT, cross),
        helper.make_tensor_value_info("cross_v", TensorProto.FLOAT, cross),
    ]


def build_decoder(w, layers, heads, d_model):
    g = Graph(w)
    hd = d_model // heads
    i64_0 = g.ints([0])
    # Positions P .. P+N-1, where P is the cache length.
    cache_len = g.op("Gather", [g.op("Shape", ["self_k"]), g.ints([3])])
    n = g.op("Gather", [g.op("Shape", ["tokens"]), g.ints([1])])
    total = g.op("Add", [cache_len, n])
    cache_len_s = g.op("Squeeze", [cache_len, i64_0])
    total_s = g.op("Squeeze", [total, i64_0])
    positions = g.op("Range", [cache_len_s, total_s, g.const("i64_one", np.array(1, dtype=np.int64))])
    x = g.op("Gather", [g.weight("decoder/embeddings/weight"), "tokens"], axis=0)
    x = g.op("Add", [x, g.op("Gather", [g.weight("decoder/position_encodings/encodings"), positions], axis=0)])
    # Causal mask [N, P+N]: query i (at position P+i) sees keys j <= P+i.
    keys = g.op("Range", [g.const("i64_zero", np.array(0, dtype=np.int64)), total_s, "i64_one"])
    allowed = g.op("LessOrEqual", [g.op("Unsqueeze", [keys, i64_0]), g.op("Unsqueeze", [positions, g.ints([1])])])
    mask = g.op("Where", [allowed, g.scalar(0.0), g.scalar(-1e9)])
    new_k, new_v = [], []
    for i in range(layers):
        p = f"decoder/layer_{i}"
        li = g.ints([i])
        h = g.layer_norm(x, p + "/self_attention/layer_norm")
        q, k, v = g.split3(g.linear(h, p + "/self_attention/linear_0"), d_model)
        past_k = g.op("Squeeze", [g.op("Gather", ["self_k", li], axis=0), i64_0])
        past_v = g.op("Squeeze", [g.op("Gather", ["self_v", li], axis=0), i64_0])
        k_all = g.op("Concat", [past_k, g.heads(k, heads, hd)], axis=2)
        v_all = g.op("Concat", [past_v, g.heads(v, heads, hd)], axis=2)
        new_k.append(g.op("Unsqueeze", [k_all, i64_0]))
        new_v.append(g.op("Unsqueeze", [v_all, i64_0]))
        a = g.attention(g.heads(q, heads, hd), k_all, v_all, hd, mask)
        x = g.op("Add", [x, g.linear(g.merge_heads(a, d_model), p + "/self_attention/linear_1")])
        h = g.layer_norm(x, p + "/attention/layer_norm")
        q = g.heads(g.linear(h, p + "/attention/linear_0"), heads, hd)
        ck = g.op("Squeeze", [g.op("Gather", ["cross_k", li], axis=0), i64_0])
        cv = g.op("Squeeze", [g.op("Gather", ["cross_v", li], axis=0), i64_0])
        a = g.attention(q, ck, cv, hd)
        x = g.op("Add", [x, g.linear(g.merge_heads(a, d_model), p + "/attention/linear_2")])
        x = g.ffn(x, p + "/ffn")
    x = g.layer_norm(x, "decoder/layer_norm")
    last = g.op("Squeeze", [g.op("Gather", [x, g.ints([-1])], axis=1), g.ints([1])])  # [B, D]
    # Tied output projection: logits = h · embeddingsᵀ, sharing the embedding initializer.
    g.nodes.append(helper.make_node("Gemm", [last, "decoder/embeddings/weight"], ["logits"], transB=1))
    g.nodes.append(helper.make_node("Concat", new_k, ["new_self_k"], axis=0))
    g.nodes.append(helper.make_node("Concat", new_v, ["new_self_v"], axis=0))
    cache = lambda name, t: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["L", "B", heads, t, hd])
    vocab = w["decoder/embeddings/weight"].shape[0]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "N"]),
        cache("self_k", "P"),
        cache("self_v", "P"),
        cache("cross_k", "S"),
        cache("cross_v", "S"),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", vocab]),
        cache("new_self_k", "T"),
        cache("new_self_v", "T"),
    ]
    return g, inputs, outputs


def main():
    if len(sys.argv) < 3:
        raise SystemExit("usage: convert_whisper.py OUT_DIR MODEL_BIN [MODEL_BIN_PART...]")
    out_dir, parts = sys.argv[1], sys.argv[2:]
    w = read_ctranslate2(parts)
    heads = int(np.asarray(w["encoder/num_heads"]).reshape(-1)[0])
    dec_heads = int(np.asarray(w["decoder/num_heads"]).reshape(-1)[0])
    if heads != dec_heads:
        raise SystemExit("encoder and decoder head counts differ")
    d_model = w["encoder/conv1/weight"].shape[0]
    enc_layers = sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    dec_layers = sum(1 for k in w if k.startswith("decoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    os.makedirs(out_dir, exist_ok=True)
    shape = f"d_model {d_model}, {heads} heads, {enc_layers}+{dec_layers} layers"
    g, i, o = build_encoder(w, enc_layers, heads, d_model, dec_layers)
    save(g, i, o, os.path.join(out_dir, "encoder.onnx"), "Whisper encoder from CTranslate2 model.bin: " + shape)
    g, i, o = build_decoder(w, dec_layers, heads, d_model)
    save(g, i, o, os.path.join(out_dir, "decoder.onnx"), "Whisper decoder from CTranslate2 model.bin: " + shape)
    print(f"convert_whisper: {shape} -> {out_dir}/encoder.onnx, decoder.onnx")


if __name__ == "__main__":
    main()

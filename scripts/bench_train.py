"""PyTorch side of the training-step benchmark (scripts/bench_train.sh); never used by impasto.

The same step impasto times with `impasto bench --train`: pytorch/examples TransformerNet
(reflection pad, nearest upsample + conv, instance norm), the Caffe VGG16 loss network from
../shared/weights, content loss at relu2_2, Gram style loss at relu1_2..relu4_3, total
variation, backward, Adam. Batch 4 at 256², float32, 2 threads. Prints one JSON line.
"""
import argparse, json, statistics, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        return self.conv2d(self.pad(x))


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(c, c, 3, 1), nn.InstanceNorm2d(c, affine=True)
        self.conv2, self.in2 = ConvLayer(c, c, 3, 1), nn.InstanceNorm2d(c, affine=True)

    def forward(self, x):
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv2d = ConvLayer(cin, cout, 3, 1)

    def forward(self, x):
        return self.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"))


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9, 1), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        self.res = nn.Sequential(*[Res(128) for _ in range(5)])
        self.deconv1, self.in4 = Up(128, 64), nn.InstanceNorm2d(64, affine=True)
        self.deconv2, self.in5 = Up(64, 32), nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9, 1)

    def forward(self, x):
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


class Vgg(nn.Module):
    names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3"]
    taps = {1, 3, 6, 9}

    def __init__(self, path):
        super().__init__()
        w = load_file(path)
        self.convs = nn.ModuleList()
        for n in self.names:
            c = nn.Conv2d(w[n + ".weight"].shape[1], w[n + ".weight"].shape[0], 3, padding=1)
            c.weight.data = torch.from_numpy(w[n + ".weight"])
            c.bias.data = torch.from_numpy(w[n + ".bias"])
            c.requires_grad_(False)
            self.convs.append(c)
        self.register_buffer("mean", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1))

    def forward(self, x):
        h = x[:, [2, 1, 0]] - self.mean
        out = []
        for i, c in enumerate(self.convs):
            h = F.relu(c(h))
            if i in self.taps:
                out.append(h)
                if i != 9:
                    h = F.max_pool2d(h, 2)
        return out


def gram(f):
    b, c, h, w = f.shape
    f = f.view(b, c, h * w)
    return f.bmm(f.transpose(1, 2)) / (c * h * w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vgg", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net, vgg = TransformerNet(), Vgg(a.vgg)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    style = torch.rand(1, 3, 256, 256) * 255
    with torch.no_grad():
        grams = [gram(f) for f in vgg(style)]
    x = torch.rand(a.batch, 3, a.size, a.size) * 255

    def step():
        opt.zero_grad()
        y = net(x)
        fy = vgg(y)
        with torch.no_grad():
            fc = vgg(x)[1]
        content = 1.0 * F.mse_loss(fy[1], fc)
        style_l = sum(5.0 * F.mse_loss(gram(f), g.expand(a.batch, -1, -1)) for f, g in zip(fy, grams))
        tv = 1e-6 * (((y[:, :, 1:, :] - y[:, :, :-1, :]) ** 2).sum() + ((y[:, :, :, 1:] - y[:, :, :, :-1]) ** 2).sum())
        (content + style_l + tv).backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    ms = []
    for _ in range(a.runs):
        t = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(ms)
    print(json.dumps({"engine": f"pytorch {torch.__version__}", "batch": a.batch, "size": a.size, "median_ms": med, "img_per_s": a.batch / (med / 1e3), "runs": ms, "threads": a.threads}), flush=True)


if __name__ == "__main__":
    main()

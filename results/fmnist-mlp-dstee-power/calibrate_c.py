"""How large must DST-EE's c be to change growth decisions? Measured at the first topology updates
of the fmnist-mlp-dstee-power protocol (LeNet-300-100, density 0.02, ERK, batch 128, SGD 0.1).

With count="updates" and grad_norm="layer_max" the gradient term g_i = |∂L/∂w_i| / max_l |∂L/∂w| is
in [0, 1] and the bonus of a weight active for n update rounds is ln(t) / (n + 1) (ε = 1). A candidate
just below the growth threshold wins a place when c times its bonus advantage exceeds the gradient
gap to the threshold; this script prints, per layer and for updates 1, 2 and 4 (the first epoch), the gradient term at the
threshold (the k-th largest over the candidates), the median over the grown, and the bonus scale
ln(t), so c can be set where the bonus is comparable to the gradient differences that decide growth.

Run: .venv/bin/python results/fmnist-mlp-dstee-power/calibrate_c.py  (about a minute, one thread)
"""

import math

import torch

import sparsetrain as st
from sparsetrain.experiments.build import build_loaders, build_optimizer
from sparsetrain.experiments.config import RunConfig
from sparsetrain.experiments.models import build_model

torch.set_num_threads(1)
cfg = RunConfig(method="dstee", density=0.02, epochs=100, schedule="multistep", seed=0)
torch.manual_seed(cfg.seed)
train, _, info, _ = build_loaders(cfg)
model = build_model(cfg.model, info["in_channels"], info["num_classes"], info["image_size"])
opt = build_optimizer(cfg, model)
records = []


class Probe(st.DSTEE):
    """DST-EE with count="updates", grad_norm="layer_max" that records the scale of its two terms."""

    def select_grow(self, layer, k, available, ctx):
        g = layer.grad_buffer.detach().abs().float()
        g = g / g.max()
        cand = g[available]
        top = torch.topk(cand, k).values
        t = ctx.update_index + 1
        records.append((ctx.update_index, layer.name, k, float(top[-1]), float(top.median()),
                        float(cand.median()), math.log(t)))
        return super().select_grow(layer, k, available, ctx)


alg = Probe(cfg.density, c=0.0, count="updates", grad_norm="layer_max", seed=cfg.seed)
sp = st.Sparsifier(model, opt, alg, total_steps=cfg.epochs * len(train))
loss_fn = torch.nn.CrossEntropyLoss()
train.set_epoch(0)
for i, (x, y) in enumerate(train):
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
print("update | layer | grown k | g at threshold | median g of grown | median g of candidates | ln t")
for u, name, k, thr, med, cmed, lt in records:
    if u in (1, 2, 4):
        print(f"{u} | {name} | {k} | {thr:.4f} | {med:.4f} | {cmed:.5f} | {lt:.3f}")

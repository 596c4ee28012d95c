"""Seconds per training step of each method, and the estimator's overhead over a bare loop.

Run through the suite (``python -m benchmarks run --sections speed``) on an idle machine.
Batch 256, the default MLP, data with 2 and 64 features. The bare loop does DCD's default step
(importance negatives, resampled) in plain torch with no estimator around it; the overhead is
the median over rounds of ``fit, bare, bare, fit`` (each pair's times adjacent, so that the
machine's drift cancels) of the fits' time over the bare loops'. Taken from the per-method
repeats instead, minutes apart, the ratio's repeats spread from 0.77 to 1.29.

Images: the default convolutional energy (``image_shape``) at batch 128 on 8×8 grey and
32×32 colour images, on the CPU and, where CUDA is available, on the GPU (with and without
``mixed_precision``). On a GPU machine ``python -m benchmarks.speed --images`` runs only this
part.

Profile: where a step's time goes, by the parts that the objectives and the training step
label for :mod:`torch.profiler` (``skdcd.proposals``, ``skdcd.backward``, ...), for the
default DCD step and CD-10 on 2-D and 64-D rows and for the image model's default; the rest
of the step (Python, minibatch indexing, the schedule, the progress bar) is ``other``. The
profiler's own cost inflates every part, so the parts are reported as shares of the
profiled step, beside the unprofiled milliseconds per step. ``python -m benchmarks.speed
--profile`` runs only this part.

Variants (``python -m benchmarks.speed --variants``): the default DCD step beside the same
step with its importance weights computed in one pass (no CPU blocks, as before they were
introduced), with fewer proposals and negatives, and CD-10, interleaved repeats.

On a machine with a GPU, ``python -m benchmarks.speed --gpu`` (a few minutes) times every
tabular method on 2-D and 64-D rows (batch 256 and 4,096) and the image energies on the
GPU, and prints the tables; nothing is written.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import md_table
from skdcd import CDEnergyEstimator, DCDEnergyEstimator, diffusion, samplers
from skdcd.networks import MLPEnergy

SECTION = "speed"
METHODS = {
    "dcd-importance": (DCDEnergyEstimator, {}),
    "dcd-importance-weighted": (DCDEnergyEstimator, {"n_negatives": None}),
    "dcd-importance-resampled": (DCDEnergyEstimator, {"n_negatives": 1}),
    "dcd-langevin-5": (DCDEnergyEstimator, {"negative_sampler": "langevin",
                                            "posterior_steps": 5}),
    "dcd-mala-5": (DCDEnergyEstimator, {"negative_sampler": "mala", "posterior_steps": 5}),
    "dcd-laplace": (DCDEnergyEstimator, {"negative_sampler": "laplace"}),
    "cd-1": (CDEnergyEstimator, {"n_steps": 1}),
    "cd-10": (CDEnergyEstimator, {"n_steps": 10}),
    "pcd-10": (CDEnergyEstimator, {"persistent": True}),
}


IMAGE_METHODS = {  # marginal DCD (MALA negatives, 10 steps), and the images' default
    "dcd-mala-10": (DCDEnergyEstimator, {"time_conditional": False}),
    "dcd-time-conditional": (DCDEnergyEstimator, {"time_conditional": True}),
    "dcd-importance": (DCDEnergyEstimator, {"time_conditional": False,
                                            "negative_sampler": "importance"}),
    "cd-10": (CDEnergyEstimator, {"n_steps": 10}),
}
IMAGE_SHAPES = ((1, 8, 8), (3, 32, 32))


def time_fit(cls, params, X, steps):
    batch = params.get("batch_size", 256)
    n_epochs = max(1, steps * batch // len(X))
    cls(max_iter=1, random_state=0, **params).fit(X)  # warm-up (lazy imports, allocator)
    est = cls(max_iter=n_epochs, random_state=0, **params)
    start = time.perf_counter()
    est.fit(X)
    return (time.perf_counter() - start) / est.t_


def time_bare_loop(X, steps):
    """DCD's default step without the estimator: the overhead reference.

    The same model and loss as ``DCDEnergyEstimator()``'s step: the MLP (with its default
    input gain) sees its input clipped to the data's box widened by 1 (``clip_margin``)
    under the envelope ``‖x‖² / 18``, the default number of importance proposals (a third each from
    the kernel, the Laplace fit and the batch's rows, :func:`skdcd.samplers.laplace_proposals`),
    of which the default number are resampled with their weights and back-propagated
    at the default noise levels (``σ = 0.1``, a quarter of the batch in ``[0.2, 1]``), the
    default energy penalty and the spurious-well guard.
    """
    # the default's resolved settings, from a one-step fit on a few rows
    default = DCDEnergyEstimator(max_iter=1, hidden_layer_sizes=(4,)).fit(X[:64])
    n_proposals, n_negatives = default.n_proposals, default.n_negatives
    reg, wide = default.energy_reg_, default.wide_noise_
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = MLPEnergy(X.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    Z = torch.as_tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    n, d = Z.shape
    low, span = Z.min(0).values - 1.0, Z.max(0).values - Z.min(0).values + 2.0
    high = low + span

    def energy(x):
        return net(torch.clamp(x, low, high)) + x.pow(2).sum(1) / 18.0

    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5e-3 * (1 + math.cos(math.pi * step / steps))
        x = Z[torch.randint(n, (256,), generator=g)]
        sigma = diffusion.sample_noise_levels(256, 0.1, generator=g, wide=wide)
        x_t = x + sigma * torch.randn(x.shape, generator=g)
        prop, log_ratio = samplers.laplace_proposals(energy, x_t, torch.ones(256, 1), sigma,
                                                     n_proposals=n_proposals, generator=g,
                                                     data=x if wide else None)
        with torch.no_grad():
            e = energy(prop.reshape(-1, d)).reshape(256, n_proposals)
        pick = samplers.systematic_resample(-e - log_ratio, g, n_draws=n_negatives)
        e_neg = energy(prop[torch.arange(256).unsqueeze(1), pick].reshape(-1, d))
        e_pos = energy(x)
        loss = (e_pos.mean() - e_neg.mean()
                + reg * (e_pos.pow(2).mean() + e_neg.pow(2).mean()))
        # the default spurious-well guard (well_penalty=1): 64 uniform points in the box
        u = low + span * torch.rand((64, d), generator=g)
        loss = loss + torch.relu(e_pos.detach().min() - 1.0 - energy(u)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def measure_overhead(X, steps: int, rounds: int) -> list[float]:
    """Per round, the time of two default DCD fits over two bare loops, run as ABBA."""
    cls, params = METHODS["dcd-importance"]
    ratios = []
    for _ in range(rounds):
        fit_a = time_fit(cls, params, X, steps)
        bare = time_bare_loop(X, steps) + time_bare_loop(X, steps)
        ratios.append((fit_a + time_fit(cls, params, X, steps)) / bare)
    return ratios


PROFILED = {  # (label, estimator, its parameters, n_features)
    "dcd 2-D": (DCDEnergyEstimator, {}, 2),
    "cd-10 2-D": (CDEnergyEstimator, {}, 2),
    "dcd 64-D": (DCDEnergyEstimator, {}, 64),
    "cd-10 64-D": (CDEnergyEstimator, {}, 64),
    "dcd-time-conditional 1×8×8": (DCDEnergyEstimator, {"image_shape": (1, 8, 8),
                                                        "batch_size": 128}, 64),
}
PARTS = ("noise", "proposals", "weights", "chains", "negatives", "positives", "guard",
         "backward", "optimizer")


def profile_step(cls, params, X, steps: int) -> dict:
    """Milliseconds per step of each labelled part, and of the whole step, under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    batch = params.get("batch_size", 256)
    n_epochs = max(1, steps * batch // len(X))
    cls(max_iter=1, random_state=0, **params).fit(X)  # warm-up
    est = cls(max_iter=n_epochs, random_state=0, **params)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        est.fit(X)
    # the steps' time only (``skdcd.step``), not fit's set-up or log Z
    parts = {e.key[len("skdcd."):]: e.cpu_time_total / 1e3 / est.t_
             for e in prof.key_averages() if e.key.startswith("skdcd.")}
    return dict(step_ms=parts.pop("step"), parts=parts, steps=int(est.t_))


def run_profile(quick: bool) -> list[dict]:
    """:func:`profile_step` of each of ``PROFILED``, with its unprofiled ms per step."""
    rows = []
    for name, (cls, params, d) in PROFILED.items():
        n = 512 if quick else (4096 if "image_shape" in params else 10240)
        X = np.random.RandomState(0).rand(n, d)
        steps = 4 if quick else 60
        profiled = profile_step(cls, params, X, steps)
        plain = [time_fit(cls, params, X, steps) for _ in range(1 if quick else 3)]
        rows.append(dict(method=name, **profiled, ms_per_step=1e3 * float(np.median(plain))))
    return rows


def _profile_report(result: dict) -> list[str]:
    rows = result.get("profile")
    if not rows:
        return []
    table = []
    for r in rows:
        whole = r["step_ms"]
        cells = [f"{100 * r['parts'][p] / whole:.0f} %" if p in r["parts"] else "—"
                 for p in PARTS]
        table.append([r["method"], f"{r['ms_per_step']:.1f}", *cells,
                      f"{100 * (1 - sum(r['parts'].values()) / whole):.0f} %"])
    meta = result.get("meta", {}).get("profile", {})
    return ["Where a step's time goes: shares of the profiled step (`torch.profiler` on the "
            "parts that the code labels, over one epoch; `other` is the rest "
            "of the step: the loss's sum, its value, Python"
            + (f"; commit {meta['commit']}, {meta['date']}" if meta else "") + "):", "",
            md_table(["method", "ms/step (unprofiled)", *PARTS, "other"], table), ""]


VARIANTS = {  # name: (estimator, parameters, CPU blocks of MLPEnergy's passes without autograd)
    "dcd": (DCDEnergyEstimator, {}, True),
    "dcd, one pass for the weights": (DCDEnergyEstimator, {}, False),
    "dcd, 24 proposals, 4 negatives": (DCDEnergyEstimator,
                                       {"n_proposals": 24, "n_negatives": 4}, True),
    "dcd, 16 proposals, 2 negatives": (DCDEnergyEstimator,
                                       {"n_proposals": 16, "n_negatives": 2}, True),
    "cd-10": (CDEnergyEstimator, {}, True),
}


def run_variants(quick: bool) -> list[dict]:
    """Milliseconds per step of ``VARIANTS``, medians of interleaved repeats (all threads)."""
    from skdcd import networks

    steps, repeats = (10, 1) if quick else (300, 3)
    block = networks.CPU_BLOCK_ROWS
    rows = []
    try:
        for d in (2, 64):
            X = np.random.RandomState(0).randn(1024 if quick else 10240, d)
            times = {name: [] for name in VARIANTS}
            for _ in range(repeats):
                for name, (cls, params, blocks) in VARIANTS.items():
                    networks.CPU_BLOCK_ROWS = block if blocks else 1 << 62
                    times[name].append(time_fit(cls, params, X, steps))
            rows += [dict(method=name, n_features=d, seconds_per_step=float(np.median(v)),
                          repeats=v) for name, v in times.items()]
    finally:
        networks.CPU_BLOCK_ROWS = block
    return rows


def _variants_report(result: dict) -> list[str]:
    rows = result.get("variants")
    if not rows:
        return []
    by = {(r["method"], r["n_features"]): r["seconds_per_step"] for r in rows}
    table = [[name, *(f"{1000 * by[(name, d)]:.1f}" for d in (2, 64)),
              *(f"{by[(name, d)] / by[('cd-10', d)]:.2f}" for d in (2, 64))]
             for name in dict.fromkeys(r["method"] for r in rows)]
    meta = result.get("meta", {}).get("variants", {})
    return [f"Variants of the default step side by side (medians of {len(rows[0]['repeats'])} "
            "interleaved repeats, batch 256, all threads"
            + (f"; commit {meta['commit']}, {meta['date']}" if meta else "") + "):", "",
            md_table(["method", "ms/step 2-D", "ms/step 64-D", "÷ CD-10 2-D", "÷ CD-10 64-D"],
                     table), ""]


def run_tabular(device: str, quick: bool, methods=tuple(METHODS)) -> list[dict]:
    """Per-step times of the tabular ``methods`` on ``device``, batch 256 and 4,096."""
    rows = []
    for d in (2, 64):
        X = np.random.RandomState(0).randn(1024 if quick else 16384, d)
        for batch in (256, 4096):
            for name in methods:
                cls, params = METHODS[name]
                params = dict(params, batch_size=batch, device=device)
                sec = time_fit(cls, params, X, 4 if quick else 100)
                rows.append(dict(method=name, n_features=d, batch_size=batch, device=device,
                                 seconds_per_step=sec, steps_per_second=1 / sec))
    return rows


def _tabular_report(rows: list[dict]) -> list[str]:
    table = [[r["method"], r["n_features"], r["batch_size"], r["device"],
              f"{1000 * r['seconds_per_step']:.1f}", f"{r['steps_per_second']:.1f}"]
             for r in rows]
    return [md_table(["method", "features", "batch", "device", "ms/step", "steps/s"], table),
            ""]


def run_images(quick: bool) -> list[dict]:
    """Per-step times of the convolutional energy at batch 128, on each available device."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for shape in IMAGE_SHAPES[:1] if quick else IMAGE_SHAPES:
        X = np.random.RandomState(0).rand(1024, math.prod(shape))
        for device in devices:
            for amp in (False, True) if device == "cuda" else (False,):
                steps = 2 if quick else (100 if device == "cuda" else 16)
                for name, (cls, params) in IMAGE_METHODS.items():
                    params = dict(params, image_shape=shape, batch_size=128, device=device,
                                  mixed_precision=amp)
                    sec = time_fit(cls, params, X, steps)
                    rows.append(dict(method=name, image_shape=list(shape), device=device,
                                     mixed_precision=amp, seconds_per_step=sec,
                                     steps_per_second=1 / sec))
    return rows


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    """Per-step times, medians over interleaved repeats, with all cores for one fit at a time."""
    steps, repeats, rounds = (10, 1, 1) if quick else (300, 5, 7)
    rng = np.random.RandomState(seeds[0])
    rows = []
    for d in (2, 64):
        X = rng.randn(10240, d)
        time_bare_loop(X, 20)  # warm-up
        # interleaved repeats: run-to-run drift on a shared machine is ~15%
        times = {name: [] for name in [*METHODS, "bare-loop"]}
        for _ in range(repeats):
            for name, (cls, params) in METHODS.items():
                times[name].append(time_fit(cls, params, X, steps))
            times["bare-loop"].append(time_bare_loop(X, steps))
        for name, values in times.items():
            sec = float(np.median(values))
            rows.append(dict(method=name, n_features=d, seconds_per_step=sec,
                             steps_per_second=1 / sec, repeats=values))
        overhead = measure_overhead(X, steps, rounds)
        rows.append(dict(method="overhead", n_features=d, ratio=float(np.median(overhead)),
                         repeats=overhead))
    settings = dict(steps=steps, repeats=repeats, overhead_rounds=rounds, batch_size=256,
                    n_rows=10240,
                    threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    return dict(settings=settings, rows=rows, images=run_images(quick),
                profile=run_profile(quick), variants=run_variants(quick))


def report(result: dict, fig_dir: Path) -> str:
    rows, settings = result["rows"], result["settings"]
    by = {(r["method"], r["n_features"]): r for r in rows}
    cd10 = {d: by[("cd-10", d)]["seconds_per_step"] for d in (2, 64)}
    table = [[name] + [f"{1000 * by[(name, d)]['seconds_per_step']:.1f}" for d in (2, 64)]
             + [f"{by[(name, d)]['seconds_per_step'] / cd10[d]:.2f}" for d in (2, 64)]
             for name in [*METHODS, "bare-loop"]]
    over = [f"{by[('overhead', d)]['ratio']:.2f}× ({d}-D; repeats "
            + ", ".join(f"{v:.2f}" for v in by[("overhead", d)]["repeats"]) + ")"
            for d in (2, 64)]
    return "\n".join([
        "## 2. Speed", "",
        f"Milliseconds per training step at batch {settings['batch_size']}, default MLP, "
        f"{settings['threads']} threads, one fit at a time; median of {settings['repeats']} "
        f"interleaved repeats of {settings['steps']} steps. `bare-loop` is DCD's default step "
        "in plain torch (no estimator).", "",
        md_table(["method", "ms/step 2-D", "ms/step 64-D", "÷ CD-10 2-D", "÷ CD-10 64-D"],
                 table), "",
        "Estimator overhead (`fit` of DCD ÷ bare loop; median of "
        f"{settings.get('overhead_rounds', settings['repeats'])} rounds of fit, bare, bare, "
        "fit): " + "; ".join(over) + ".", "",
        *_image_report(result), *_profile_report(result), *_variants_report(result)])


def _image_report(result: dict) -> list[str]:
    rows = result.get("images")
    if not rows:
        return []
    table = [[r["method"], "×".join(map(str, r["image_shape"])),
              r["device"] + (" (bf16)" if r["mixed_precision"] else ""),
              f"{1000 * r['seconds_per_step']:.1f}", f"{r['steps_per_second']:.1f}"]
             for r in rows]
    gpu = result["settings"].get("gpu")
    channels = DCDEnergyEstimator().conv_channels
    return [f"Images: the default convolutional energy (`image_shape`, `conv_channels="
            f"{channels}`), batch 128" + (f"; GPU: {gpu}" if gpu else "; no GPU on this machine")
            + ".", "",
            md_table(["method", "image", "device", "ms/step", "steps/s"], table), ""]


def main():
    from benchmarks.common import meta, write_json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", action="store_true", help="only the image energies")
    parser.add_argument("--profile", action="store_true", help="only the step's breakdown")
    parser.add_argument("--variants", action="store_true",
                        help="only the default step beside its variants")
    parser.add_argument("--gpu", action="store_true",
                        help="every method and the image energies on the GPU (printed only)")
    args = parser.parse_args()
    if args.gpu:
        device = "cuda" if torch.cuda.is_available() else None
        if device is None:
            parser.error("--gpu needs a CUDA device")
        print(f"GPU: {torch.cuda.get_device_name()}")
        print("\n".join(_tabular_report(run_tabular(device, args.quick))))
        print(_image_report({"images": run_images(args.quick), "settings": {
            "gpu": torch.cuda.get_device_name()}}))
        return
    if args.profile or args.variants:
        key, rows = (("profile", run_profile(args.quick)) if args.profile
                     else ("variants", run_variants(args.quick)))
        path = Path(__file__).with_name("results") / "speed.json"
        part = {key: rows, "meta": {key: meta()}}
        if not args.quick and path.exists():  # the part joins the section's results
            from benchmarks.common import read_json
            result = read_json(path)
            part = {**result, key: rows, "meta": {**result["meta"], key: meta()}}
            write_json(path, part)
        print("\n".join(_profile_report(part) + _variants_report(part)))
        return
    if args.images:
        rows = run_images(args.quick)
        print(_image_report({"images": rows, "settings": {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}))
        return
    result = run(quick=args.quick, seeds=[0], n_jobs=1)
    write_json(Path(__file__).with_name("results") / "speed.json", {"meta": meta(), **result})
    print(report(result, Path(__file__).with_name("figures")))


if __name__ == "__main__":
    main()

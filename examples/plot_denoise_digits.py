"""
=========================================================
Generating and denoising digits with a time-dependent EBM
=========================================================

Fit a time-conditional :class:`~skdcd.DCDEnergyEstimator` to the 8x8 handwritten
digits of scikit-learn: a small convolutional energy ``E(x, σ)`` learns the digits
diffused to every level of a noise ladder, trained by DCD between neighbouring levels.
Generation then runs recovery sampling from the widest level down to the narrowest, and
denoising is one gradient (Tweedie's formula) at the noise's own level. Kernel PCA, the
scikit-learn denoising recipe, is the baseline.
"""

# %%
# Data and model
# --------------
# :func:`~skdcd.datasets.load_digits_images` returns flat rows with pixels in [0, 1] and
# the image shape ``(1, 8, 8)``; passing it as ``image_shape`` selects the convolutional
# energy and one scale for all pixels. The budget here is small, for the documentation
# build; the benchmarks train for the default number of steps.
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import KernelPCA
from sklearn.model_selection import train_test_split

from skdcd import DCDEnergyEstimator
from skdcd.datasets import load_digits_images
from skdcd.plotting import plot_sample_grid

X, image_shape = load_digits_images()
X_train, X_test = train_test_split(X, test_size=300, random_state=0)

est = DCDEnergyEstimator(image_shape=image_shape, time_conditional=True, max_iter=60,
                         random_state=0)
start = time.perf_counter()
est.fit(X_train)
print(f"fit: {time.perf_counter() - start:.1f} s, {est.t_} steps, "
      f"{len(est.noise_levels_)} noise levels")

# %%
# Generate
# --------
start = time.perf_counter()
samples = est.sample(32, random_state=0)
print(f"sample: {time.perf_counter() - start:.1f} s")

# %%
# Denoise
# -------
# Noise of standard deviation 0.2 (a fifth of the pixel range), given in the units of
# the data. The model's ladder spans it, so ``denoise`` uses Tweedie's formula.
noise_std = 0.2
rng = np.random.default_rng(0)
X_noisy = X_test + noise_std * rng.standard_normal(X_test.shape)

X_tweedie = est.denoise(X_noisy, noise_std=noise_std)
kpca = KernelPCA(n_components=64, kernel="rbf", gamma=0.03, alpha=0.1,
                 fit_inverse_transform=True, random_state=0).fit(X_train)
X_kpca = kpca.inverse_transform(kpca.transform(X_noisy))


def psnr(estimate, clean):
    """Peak signal-to-noise ratio in dB for images with values in [0, 1]."""
    return 10 * np.log10(1.0 / np.mean((estimate - clean) ** 2))


results = {"noisy": X_noisy, "kernel PCA": X_kpca, "EBM (Tweedie)": X_tweedie}
for name, estimate in results.items():
    print(f"{name:14s} PSNR {psnr(estimate, X_test):5.2f} dB on {len(X_test)} test digits")

# %%
# Figure
# ------
# Samples, then 16 test digits: clean, noisy and the two reconstructions.
panels = {"samples": samples, "clean": X_test[:16],
          **{name: images[:16] for name, images in results.items()}}
fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0),
                         layout="constrained")
for ax, (name, images) in zip(axes, panels.items(), strict=True):
    plot_sample_grid(np.clip(images, 0, 1), image_shape=image_shape, n_cols=4, ax=ax,
                     title=name)

# %%
# Reading the numbers
# -------------------
# With this short budget the samples are rough; ``benchmarks/RESULTS.md`` reports the
# default budget, where the PSNR and the MMD² of the samples to held-out digits are
# measured against kernel PCA, CD and scikit-learn's density estimators.

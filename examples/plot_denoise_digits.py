"""
===========================================
Denoising digits with an energy-based prior
===========================================

Fit :class:`~skdcd.DCDEnergyEstimator` to the 8x8 handwritten digits of scikit-learn
(64 features, flattened), add Gaussian noise to held-out digits, and denoise them under
the model prior with :meth:`~skdcd.DCDEnergyEstimator.denoise`: the posterior mean
(a MALA average) and the posterior mode (MAP). A PCA projection is the baseline.
"""

# %%
# Data and model
# --------------
# Pixels are scaled to [0, 1]. The estimator standardises each pixel internally; the
# always-blank border pixels are left as they are.
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split

from skdcd import DCDEnergyEstimator
from skdcd.plotting import plot_sample_grid

X = load_digits().data / 16.0
X_train, X_test = train_test_split(X, test_size=200, random_state=0)

est = DCDEnergyEstimator(max_iter=40, noise_std=(0.1, 1.0), random_state=0)
start = time.perf_counter()
est.fit(X_train)
print(f"fit: {time.perf_counter() - start:.1f} s, {est.t_} steps on {X_train.shape}")

# %%
# Denoise
# -------
# Noise of standard deviation 0.2 (a fifth of the pixel range). ``noise_std`` is given
# in the units of the data.
noise_std = 0.2
rng = np.random.default_rng(0)
X_clean = X_test[:16]
X_noisy = X_clean + noise_std * rng.standard_normal(X_clean.shape)

start = time.perf_counter()
X_mean = est.denoise(X_noisy, noise_std=noise_std, random_state=0)
X_map = est.denoise(X_noisy, noise_std=noise_std, method="map")
print(f"denoise: {time.perf_counter() - start:.1f} s")

pca = PCA(n_components=16, random_state=0).fit(X_train)
X_pca = pca.inverse_transform(pca.transform(X_noisy))


def psnr(estimate, clean):
    """Peak signal-to-noise ratio in dB for images with values in [0, 1]."""
    return 10 * np.log10(1.0 / np.mean((estimate - clean) ** 2))


results = {"noisy": X_noisy, "PCA (16 components)": X_pca,
           "EBM posterior mean": X_mean, "EBM MAP": X_map}
for name, estimate in results.items():
    print(f"{name:22s} PSNR {psnr(estimate, X_clean):5.2f} dB")

# %%
# Figure
# ------
# Rows of 16 test digits: clean, noisy, and the three reconstructions. All tiles share
# one intensity scale per panel.
panels = {"clean": X_clean, **results}
fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4),
                         layout="constrained")
for ax, (name, images) in zip(axes, panels.items(), strict=False):
    plot_sample_grid(np.clip(images, 0, 1), image_shape=(8, 8), n_cols=4, ax=ax,
                     title=name)

# %%
# Reading the numbers
# -------------------
# PSNR is computed on these 16 digits, with the small training budget of this example
# (40 epochs). A prior that has not learnt the digits well can score *below* the noisy
# input: the posterior mean then averages over spurious low-energy regions of the
# 64-dimensional space. MAP is less exposed, since it only descends to the nearest
# mode. See the limitations page of the user guide for what to do about it.

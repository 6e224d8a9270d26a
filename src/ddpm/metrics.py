"""Sample-quality metrics: Fréchet distance and KID of features, and a digits metric with no download.

FID/KID proper use Inception-v3 pool features (Heusel et al. 2017; Bińkowski et al. 2018). Their
weights cannot be downloaded here, so for the built-in digits the project trained its own small
classifier (seeded) and reports the Fréchet distance of its features ("FD-digits"),
plus the classifier's confidence and class coverage of the samples. Its weights ship with the
package (SHIPPED_CLASSIFIER), so every machine scores with the same features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

CLASSIFIER_SIZE = 16  # the digits classifier sees every image resized to 16x16 grayscale
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name
# The classifier that defines FD/KD-digits, precision and recall, as trained by
# train_digits_classifier(seed=0, epochs=30, retrain=True) once, and shipped: seeded training is
# bit-identical only under the same kernels and thread count, and classifiers trained under five
# such settings moved the precision of the same 2000 samples by up to 0.011 (docs/digits_classifier.md;
# benchmarks/digits_classifier.py measures a retrain and rewrites this file).
SHIPPED_CLASSIFIER = Path(__file__).parent / "assets" / "digits_classifier_s0_e30.safetensors"
SHIPPED_SETTING = (0, 30)  # (seed, epochs) of the shipped weights


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1^1/2 sigma2 sigma1^1/2)^1/2), using symmetric
    eigendecompositions (stable for the near-singular covariances of few samples).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def save_reference_statistics(path: str | Path, features: np.ndarray, **meta: Any) -> Path:
    """Write features' mean and covariance as a .npz (keys mu, sigma: the EDM / guided-diffusion
    reference-file convention), with `meta` (dataset, image size, count) as a JSON string."""
    mu, sigma = feature_statistics(features)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, meta=np.array(json.dumps({"num_images": int(len(features)), **meta})))
    return path


def load_reference_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(mu, sigma, meta) of a reference .npz written by save_reference_statistics (or EDM's fid.py ref)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--ref {path}: no such file (make one with `ddpm stats DATASET --out {path}`).")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise UsageError(f"--ref {path} has keys {sorted(f.keys())}, not mu and sigma: make it with `ddpm stats`.")
        meta = json.loads(str(f["meta"])) if "meta" in f else {}
        return f["mu"], f["sigma"], meta


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1 normalised) of (N, D) features, in float64."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def kernel_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, over random subsets.

    Returns (mean, std) over subsets.
    """
    rng = np.random.default_rng(seed)
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    n = min(len(f1), len(f2), subset_size)
    d = f1.shape[1]
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), n, replace=False)]
        y = f2[rng.choice(len(f2), n, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def precision_recall(f_fake: np.ndarray, f_real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (Kynkäänniemi et al. 2019) of two feature sets.

    Each set's manifold is the union of balls around its points, each reaching that point's k-th
    nearest neighbour in the same set. Precision = the fraction of fake points inside the real
    manifold (are samples realistic?); recall = the fraction of real points inside the fake one
    (do samples cover the data?). A blurry set scores low precision; a collapsed one low recall.
    """
    fake = torch.as_tensor(np.asarray(f_fake, np.float64))
    real = torch.as_tensor(np.asarray(f_real, np.float64))

    def radii(f: torch.Tensor) -> torch.Tensor:
        return torch.cdist(f, f).kthvalue(k + 1, dim=1).values  # k + 1: the point itself is at 0

    def inside(points: torch.Tensor, centres: torch.Tensor, r: torch.Tensor) -> float:
        return float((torch.cdist(points, centres) <= r[None, :]).any(dim=1).double().mean())

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


class DigitsClassifier(nn.Module):
    """A small CNN for the 10 digit classes on 16x16 grayscale images; features() is its 64-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(to_classifier_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, 1, 16, 16) grayscale, antialiased resize."""
    x = x.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-1] != CLASSIFIER_SIZE:
        x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def _digits(size: int = CLASSIFIER_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    from .data import load_digits_dataset

    return load_digits_dataset(size, 1).images, torch.from_numpy(load_digits().target).long()


def _halves() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    half = len(x) // 2
    return x[order[:half]], x[order[half:]], y[order[half:]]


def reference_digits() -> torch.Tensor:
    """The 898 digits (a fixed half) that samples are scored against, (N, 1, 16, 16) in [-1, 1]."""
    return _halves()[0]


def heldout_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The other 899 digits and their labels: real images that are not in the reference, to
    calibrate the metrics and to test editing on."""
    _, images, labels = _halves()
    return images, labels


def train_digits_classifier(seed: int = 0, epochs: int = 30, retrain: bool = False) -> tuple[DigitsClassifier, float]:
    """The digits classifier (trained on 80% of digits) and its accuracy on the other 20%.

    seed 0 and 30 epochs, the defaults every score uses, load the shipped weights (SHIPPED_CLASSIFIER)
    unless retrain=True. Other settings, and retrain=True, train here (seeded: bit-identical only under
    the same kernels and thread count); other settings are then cached in ~/.cache/ddpm (or $DDPM_CACHE)
    under the seed and epoch count, and loaded from there unless retrain=True.
    """
    from .data import cache_root

    shipped_setting = (seed, epochs) == SHIPPED_SETTING
    cache = cache_root() / f"digits_classifier_s{seed}_e{epochs}.pt"
    x, y = _digits()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    split = int(0.8 * len(x))
    train_idx, test_idx = order[:split], order[split:]
    model = DigitsClassifier()
    if shipped_setting and not retrain:
        from safetensors.torch import load_file

        if not SHIPPED_CLASSIFIER.is_file():
            raise UsageError(f"the digits classifier {SHIPPED_CLASSIFIER} is missing from this install of ddpm; "
                             "reinstall ddpm (pip install --force-reinstall ddpm), or in a clone restore it "
                             "(git checkout -- src/ddpm/assets).")
        model.load_state_dict(load_file(SHIPPED_CLASSIFIER))
    elif cache.is_file() and not retrain:
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        # Training needs gradients whatever the caller's mode (digits_score runs under no_grad).
        with torch.random.fork_rng(), torch.enable_grad(), torch.inference_mode(False):
            torch.manual_seed(seed)
            model = DigitsClassifier()
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            for _ in range(epochs):
                perm = train_idx[torch.randperm(split, generator=gen)]
                for i in range(0, split, 64):
                    idx = perm[i:i + 64]
                    # Small shifts make the features robust to where a generated digit sits.
                    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
                    batch = torch.roll(x[idx], shifts=shift, dims=(2, 3))
                    loss = F.cross_entropy(model(batch), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        if not shipped_setting:  # the shipped setting is never cached: its weights are the shipped file
            cache.parent.mkdir(parents=True, exist_ok=True)
            from .checkpoint import atomic_save

            atomic_save(model.state_dict(), cache)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    return model, accuracy


@dataclass
class DigitsScore:
    """The digits metric of a set of samples."""

    fd_digits: float  # Fréchet distance of classifier features, samples vs the 898 reference digits (biased up at small N)
    kd_digits: float  # KID (unbiased MMD^2, cubic kernel) of the same features x 1000; ~0 for real digits
    confidence: float  # mean top-class probability of the samples (real digits: see `reference`)
    coverage: int  # classes that are the top class of at least 2% of samples (of 10)
    precision: float  # k-NN precision (k = 3) of the features against the reference half: realism
    recall: float  # k-NN recall (k = 3): how much of the reference the samples cover
    class_counts: list[int]  # how many samples fall in each class
    num_samples: int  # samples the numbers are computed from
    classifier_accuracy: float  # held-out accuracy of the classifier on real digits


def class_accuracy(samples: torch.Tensor, labels: torch.Tensor, classifier: DigitsClassifier | None = None) -> dict:
    """How often the digits classifier reads each sample as the class it was asked for.

    Returns {"overall": fraction, "per_class": {class: fraction}, "counts": {class: samples}}.
    """
    if classifier is None:
        classifier, _ = train_digits_classifier()
    labels = torch.as_tensor(labels).long()
    with torch.no_grad():
        hit = (classifier(samples).argmax(1) == labels).double()
    per = {int(c): float(hit[labels == c].mean()) for c in labels.unique()}
    return {"overall": float(hit.mean()), "per_class": per, "counts": {int(c): int((labels == c).sum()) for c in labels.unique()}}


def digits_mismatch(samples: torch.Tensor) -> str | None:
    """None if (N, C, H, W) samples are what the digits metric is defined on (one channel,
    CLASSIFIER_SIZE square, as the demo draws), else a line saying why they are not."""
    c, h, w = samples.shape[1:]
    if c == 1 and h == w == CLASSIFIER_SIZE:
        return None
    return (f"FD-digits scores {CLASSIFIER_SIZE}x{CLASSIFIER_SIZE} grayscale digits (as the demo draws); these samples "
            f"are {h}x{w} with {c} channel(s), so it does not apply.")


@torch.no_grad()
def digits_score(samples: torch.Tensor, classifier: DigitsClassifier | None = None, accuracy: float | None = None) -> DigitsScore:
    """Score (N, C, H, W) samples in [-1, 1] against the reference half of the built-in digits."""
    if classifier is None:
        classifier, accuracy = train_digits_classifier()
    real = reference_digits()
    f_real = classifier.features(real).numpy()
    f_fake = classifier.features(samples).numpy()
    probs = torch.softmax(classifier.head(torch.from_numpy(f_fake)), dim=1)
    counts = torch.bincount(probs.argmax(1), minlength=10).tolist()
    n = samples.shape[0]
    precision, recall = precision_recall(f_fake, f_real)
    scale = float(np.sqrt((f_real.astype(np.float64) ** 2).mean())) or 1.0
    return DigitsScore(
        fd_digits=frechet_distance(*feature_statistics(f_fake), *feature_statistics(f_real)),
        # KID's cubic kernel expects features of order 1: scale both sets by the real features' RMS.
        kd_digits=1000 * kernel_distance(f_fake / scale, f_real / scale, subsets=20, subset_size=min(n, 500))[0],
        confidence=float(probs.max(1).values.mean()),
        coverage=sum(c >= max(1, 0.02 * n) for c in counts),
        precision=precision,
        recall=recall,
        class_counts=counts,
        num_samples=n,
        classifier_accuracy=float(accuracy if accuracy is not None else float("nan")),
    )


def inception_weights_path() -> Path:
    """Where torch-fidelity keeps (and downloads) the Inception-v3 weights: torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_status() -> str | None:
    """None if Inception-v3 FID/KID can run here, else a message saying what is missing.

    The weights need not be here: torch-fidelity downloads them on first use, as its users expect
    (inception_features says in one line where to put them when that fails, e.g. offline)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: F401
    except Exception as err:  # not installed, or its torchvision does not import beside this torch
        return (f"FID/KID need torch-fidelity's Inception-v3 (import failed: {type(err).__name__}: {err}). Install "
                "`torch-fidelity` (it needs a torchvision that imports beside your torch); it fetches its weights "
                f"{INCEPTION_WEIGHTS} into {inception_weights_path().parent} on first use. For the built-in digits, "
                "the FD-digits metric needs nothing.")
    return None


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """2048-d Inception-v3 pool features of (N, C, H, W) images in [-1, 1] (needs inception_status() None).

    The weights are read from inception_weights_path(), or downloaded there by torch-fidelity; a
    failed download (offline) is a UsageError that says where to put the file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inception_weights_path()
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(path) if path.is_file() else None)
    except Exception as err:  # the download failed: no network, a proxy, a full disk
        raise UsageError(f"could not fetch the Inception-v3 weights ({type(err).__name__}: {err}); put "
                         f"{INCEPTION_WEIGHTS} at {path} (from a machine that has it) and run again.") from None
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
        out.append(net(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))[0].numpy())
    return np.concatenate(out)

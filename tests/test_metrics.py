"""Metrics against float64 references with known answers, and the digits metric's sanity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import ddpm

from ddpm.data import load_digits_dataset
from ddpm.metrics import (
    SHIPPED_CLASSIFIER,
    DigitsClassifier,
    digits_score,
    frechet_distance,
    heldout_digits,
    inception_status,
    kernel_distance,
    precision_recall,
    train_digits_classifier,
)


def test_frechet_distance_of_gaussians_with_known_answer():
    # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_kernel_distance_is_near_zero_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    same, _ = kernel_distance(x, y, subsets=5, subset_size=400)
    far, _ = kernel_distance(x, y + 2.0, subsets=5, subset_size=400)
    assert abs(same) < 0.05 and far > 10 * max(abs(same), 1e-3)


@pytest.fixture
def classifier():
    return train_digits_classifier()  # the shipped weights


def test_digits_classifier_is_accurate_and_every_eval_uses_the_shipped_one(classifier, tmp_path):
    model, accuracy = classifier
    assert accuracy > 0.95
    from safetensors.torch import load_file

    shipped = load_file(SHIPPED_CLASSIFIER)
    for k, v in model.state_dict().items():
        assert torch.equal(v, shipped[k]), k
    # The first `ddpm eval` on a new machine (an empty cache) scores with the shipped classifier, not
    # one trained there (whose rounding would follow that CPU), and a stale cached one does not win.
    real = load_digits_dataset(16, 1).images[:20]
    arr = ((real.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.savez(tmp_path / "s.npz", arr_0=arr)
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(DigitsClassifier().state_dict(), cache / "digits_classifier_s0_e30.pt")
    r = ddpm("eval", str(tmp_path / "s.npz"), env={"DDPM_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["digits"]["classifier_accuracy"] == accuracy
    as_read = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert json.loads(r.stdout)["digits"]["fd_digits"] == pytest.approx(
        digits_score(as_read, model, accuracy).fd_digits, rel=1e-4)
    assert sorted(p.name for p in cache.iterdir()) == ["digits_classifier_s0_e30.pt"]  # nothing trained or written


def test_other_classifier_settings_train_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    train_digits_classifier(retrain=True)  # the shipped setting retrained: nothing cached
    assert list(tmp_path.iterdir()) == []
    first, _ = train_digits_classifier(seed=1, epochs=1)
    cached = tmp_path / "digits_classifier_s1_e1.pt"
    planted = DigitsClassifier().state_dict()
    torch.save(planted, cached)
    again, _ = train_digits_classifier(seed=1, epochs=1)  # loaded from the cache, not trained
    assert all(torch.equal(v, planted[k]) for k, v in again.state_dict().items())
    fresh, _ = train_digits_classifier(seed=1, epochs=1, retrain=True)  # trained, and the cache rewritten
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in torch.load(cached, weights_only=True).items())


def test_a_classifier_retrained_here_scores_real_digits_like_the_shipped_one(classifier):
    # The shipped weights are what train_digits_classifier(retrain=True) makes (on one thread with the
    # plainest kernels); retrained here the weights differ in rounding, not in what they measure.
    model, accuracy = classifier
    retrained, retrained_accuracy = train_digits_classifier(retrain=True)
    assert retrained_accuracy > 0.97
    real = load_digits_dataset(16, 1).images
    gen = torch.Generator().manual_seed(0)
    subset = real[torch.randperm(len(real), generator=gen)[:500]]
    a, b = digits_score(subset, model, accuracy), digits_score(subset, retrained, retrained_accuracy)
    assert abs(a.precision - b.precision) < 0.02 and abs(a.recall - b.recall) < 0.02
    assert abs(a.fd_digits - b.fd_digits) < 0.25 * max(a.fd_digits, b.fd_digits)


def test_digits_score_real_data_near_zero_noise_far(classifier):
    model, accuracy = classifier
    real = load_digits_dataset(16, 1).images
    gen = torch.Generator().manual_seed(0)
    subset = real[torch.randperm(len(real), generator=gen)[:500]]
    good = digits_score(subset, model, accuracy)
    noise = digits_score(torch.rand(500, 1, 16, 16, generator=gen) * 2 - 1, model, accuracy)
    assert good.num_samples == 500 and good.coverage == 10 and good.confidence > 0.9
    assert good.fd_digits < 0.05 * noise.fd_digits and abs(good.kd_digits) < 0.02 * noise.kd_digits
    assert noise.coverage < 10 or noise.confidence < 0.6


def test_precision_recall_against_a_brute_force_reference():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.5, 0.7, size=(50, 3))

    def radius(points, i, k=3):  # distance to the k-th nearest other point, by sorting every distance
        return sorted(np.linalg.norm(points - points[i], axis=1))[k]

    def coverage(points, centres):
        r = [radius(centres, j) for j in range(len(centres))]
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r, strict=True)) for p in points])

    precision, recall = precision_recall(fake, real)
    assert precision == pytest.approx(coverage(fake, real)) and recall == pytest.approx(coverage(real, fake))
    # A collapsed set (every sample near one real point) is precise but covers nothing.
    p2, r2 = precision_recall(real[:1] + rng.normal(0, 1e-3, size=(50, 3)), real)
    assert p2 == 1.0 and r2 < 0.1


def test_digits_metrics_tell_real_digits_from_blurred_and_noised(classifier):
    model, accuracy = classifier
    real = heldout_digits()[0]  # not in the reference the metric compares with
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(real, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noised = (real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    s_real, s_blur, s_noise = (digits_score(x, model, accuracy) for x in (real, blurred, noised))
    assert s_real.precision > 0.85 and s_real.recall > 0.85 and s_real.coverage == 10
    # FD-digits ranks both degradations below real digits (docs/metric_calibration.md has the table);
    # recall catches the blur, which thins out the digits' variety.
    assert s_blur.fd_digits > 3 * s_real.fd_digits and s_noise.fd_digits > 1.5 * s_real.fd_digits
    assert s_blur.recall < s_real.recall - 0.1 and s_noise.precision < s_real.precision


def test_eval_cli_reports_digits_metric_and_says_why_fid_is_missing(tmp_path, classifier):
    real = load_digits_dataset(16, 1).images[:64]
    arr = ((real.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.savez(tmp_path / "s.npz", arr_0=arr)
    r = ddpm("eval", str(tmp_path / "s.npz"), "--dataset", "digits", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_samples"] == 64 and report["digits"]["num_samples"] == 64
    if inception_status() is not None:
        assert report["fid"] is None and "Inception" in report["fid_unavailable"]


def _npz(path, shape, seed=0):
    np.savez(path, arr_0=np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return str(path)


def test_eval_reports_fd_digits_only_for_digit_like_samples(tmp_path, capsys, monkeypatch):
    # FD-digits is defined on 16x16 grayscale digits: RGB or other sizes must not get a digits score.
    import ddpm.metrics
    from ddpm.cli import main

    absent = "FID/KID need torch-fidelity's Inception-v3 (not here)."
    monkeypatch.setattr(ddpm.metrics, "inception_status", lambda: absent)
    for shape in ((20, 16, 16, 3), (20, 32, 32, 1), (20, 8, 8, 1)):
        assert main(["eval", _npz(tmp_path / "s.npz", shape)]) == 2, shape
        out = capsys.readouterr()
        assert "fd_digits" not in out.out and out.err.count("\n") == 1, (shape, out)
        assert "16x16 grayscale" in out.err and "Inception" in out.err, out.err
    # With Inception present (stood in for by a fixed projection), RGB samples get FID, not FD-digits.
    monkeypatch.setattr(ddpm.metrics, "inception_status", lambda: None)
    monkeypatch.setattr(ddpm.metrics, "inception_features",
                        lambda x: x.flatten(1)[:, :: x[0].numel() // 6].double().numpy())
    assert main(["eval", _npz(tmp_path / "s.npz", (20, 16, 16, 3)), "--max-reference", "50"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "digits" not in report and "16x16 grayscale" in report["digits_unavailable"]
    assert report["fid"] > 0 and report["num_reference"] == 50


def test_stats_then_eval_ref_gives_the_fid_of_computing_both_sides_at_once(tmp_path, capsys, monkeypatch):
    # A fixed projection stands in for Inception (what ddpm stats/eval do around it is under test).
    import ddpm.metrics
    from ddpm.cli import main
    from ddpm.data import load_dataset

    proj = torch.randn(16 * 16 * 3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    monkeypatch.setattr(ddpm.metrics, "inception_status", lambda: None)
    monkeypatch.setattr(ddpm.metrics, "inception_features",
                        lambda x: (x.repeat(1, 3 // x.shape[1], 1, 1).flatten(1).double() @ proj).numpy())
    ref = tmp_path / "ref.npz"
    assert main(["stats", "digits", "--image-size", "16", "--channels", "3", "--max-images", "300",
                 "--out", str(ref)]) == 0
    assert "300 images of digits" in capsys.readouterr().out
    samples = _npz(tmp_path / "s.npz", (40, 16, 16, 3), seed=1)
    assert main(["eval", samples, "--ref", str(ref)]) == 0
    report = json.loads(capsys.readouterr().out)
    # The same FID from both sides' features at once, through the float64 reference formula.
    data = load_dataset("digits", 16, 3)
    f_ref = ddpm.metrics.inception_features(torch.stack([data[i] for i in range(300)]))
    x = torch.from_numpy(np.load(samples)["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    f_fake = ddpm.metrics.inception_features(x)
    want = frechet_distance(f_fake.mean(0), np.cov(f_fake, rowvar=False), f_ref.mean(0), np.cov(f_ref, rowvar=False))
    assert report["fid"] == pytest.approx(want, rel=1e-9) and report["num_reference"] == 300
    assert main(["eval", samples, "--max-reference", "300"]) == 0  # and reading the dataset again
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(want, rel=1e-9)
    # A reference of other images, or no file, is one line naming the file and the fix.
    assert main(["eval", _npz(tmp_path / "g.npz", (40, 16, 16, 1)), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "3x16x16" in err and "--channels 1" in err and err.count("\n") == 1
    assert main(["eval", samples, "--ref", str(tmp_path / "none.npz")]) == 2
    assert "none.npz: no such file" in capsys.readouterr().err

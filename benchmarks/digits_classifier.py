"""How far a digits classifier retrained on this machine moves the scores, against the shipped one.

    .venv/bin/python benchmarks/digits_classifier.py                       # real held-out digits only
    .venv/bin/python benchmarks/digits_classifier.py --checkpoints runs/demo/checkpoints/step_00003000.pt
    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \\
        .venv/bin/python benchmarks/digits_classifier.py --write            # rewrite the shipped weights

FD-digits, precision and recall are distances in the features of a small classifier. Its training is
seeded, but its float rounding follows the CPU's kernels and the thread count, so two machines train
two different classifiers; until 2026-12-04 each machine trained its own on first use. This retrains
one here (train_digits_classifier(retrain=True)), prints how far its weights lie from the shipped ones,
and scores the real held-out digits (and 2000 samples of each --checkpoints, seed 7, default sampler)
with both. --write saves the retrained weights as the shipped file instead (run it under the setting
above: one thread and the plainest kernels, the most reproducible there are).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpm.generation import load_model, sample_images
from ddpm.metrics import SHIPPED_CLASSIFIER, digits_score, heldout_digits, train_digits_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="*", default=[], help="checkpoints whose samples to score as well")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--write", action="store_true", help="save the retrained weights as the shipped file")
    args = parser.parse_args()
    retrained, acc_retrained = train_digits_classifier(retrain=True)
    where = f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.write:
        from safetensors.torch import save_file

        SHIPPED_CLASSIFIER.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in retrained.state_dict().items()}, str(SHIPPED_CLASSIFIER))
        print(f"wrote {SHIPPED_CLASSIFIER} (trained on {where}; held-out accuracy {acc_retrained:.4f})")
        return
    shipped, acc_shipped = train_digits_classifier()
    diff = max((retrained.state_dict()[k] - v).abs().max().item() for k, v in shipped.state_dict().items())
    print(f"Retrained on {where}. Held-out accuracy: shipped {acc_shipped:.4f}, retrained {acc_retrained:.4f}; "
          f"largest weight difference {diff:.3g}.\n")
    sets = {"real held-out digits": heldout_digits()[0]}
    for ckpt in args.checkpoints:
        m = load_model(checkpoint=Path(ckpt))
        sets[ckpt] = sample_images(m.model, m.schedule, args.samples, seed=7, batch_size=250)
    print("| images | N | precision shipped / retrained | recall shipped / retrained | FD-digits shipped / retrained |\n"
          "|---|---|---|---|---|")
    for name, x in sets.items():
        a, b = digits_score(x, shipped, acc_shipped), digits_score(x, retrained, acc_retrained)
        print(f"| {name} | {len(x)} | {a.precision:.3f} / {b.precision:.3f} | {a.recall:.3f} / {b.recall:.3f} "
              f"| {a.fd_digits:.2f} / {b.fd_digits:.2f} |")


if __name__ == "__main__":
    main()

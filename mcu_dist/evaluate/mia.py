"""MIA-Efficacy (SalUn / Unlearn-Sparse convention).

Shadow members: n samples of D_r; shadow non-members: n samples of D_test (remaining classes when
class-wise); n = min(|D_r|, |D_test|, cap), seeded. An RBF SVC (C=3, gamma="auto") learns
member vs non-member from a per-sample feature; MIA-Efficacy = 100 x the fraction of D_f it calls
*non-member*. The headline feature is the true-label confidence; correctness, entropy and
modified entropy are the secondary features.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mcu_dist.evaluate.metrics import Outputs

FEATURES = ("confidence", "correctness", "entropy", "m_entropy")
_EPS = 1e-12


def feature(out: Outputs, name: str) -> np.ndarray:
    p = out.probs.double().clamp_min(_EPS)
    if name == "confidence":
        f = out.confidence.double()
    elif name == "correctness":
        f = out.correct.double()
    elif name == "entropy":
        f = -(p * p.log()).sum(1)
    elif name == "m_entropy":
        py = p.gather(1, out.labels.view(-1, 1)).flatten()
        rest = (1 - p).clamp_min(_EPS)
        others = -(p * rest.log()).sum(1) + py * (1 - py).clamp_min(_EPS).log()
        f = -(1 - py) * py.log() + others
    else:
        raise KeyError(name)
    return f.numpy().reshape(-1, 1)


def shadow_positions(n_retain: int, n_test: int, cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced, seeded shadow member/non-member positions (into the retain and test outputs)."""
    n = min(n_retain, n_test, cap)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_retain, generator=g)[:n], torch.randperm(n_test, generator=g)[:n]


def attack_verdicts(
    retain: Outputs, test: Outputs, forget: Outputs, name: str, cap: int = 2000, seed: int = 0
) -> torch.Tensor:
    """The attack's verdict on every D_f sample (True: *non-member*), shadow sets drawn with ``seed``."""
    from sklearn.svm import SVC

    members, non_members = shadow_positions(len(retain.correct), len(test.correct), cap, seed)
    x_train = np.concatenate(
        [feature(retain, name)[members.numpy()], feature(test, name)[non_members.numpy()]]
    )
    y_train = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x_train, y_train)
    return torch.from_numpy(clf.predict(feature(forget, name)) == 0)


def attacks(
    retain: Outputs, test: Outputs, forget: Outputs, jobs: list[tuple[str, int]], cap: int = 2000
) -> list[tuple[torch.Tensor, float]]:
    """``attack_verdicts`` for every ``(feature, seed)`` job, with each fit's seconds, in job order.

    The fits run on host threads, one per torch thread (libsvm releases the GIL): the verdicts are
    those of the fits run one after another.
    """

    def timed(job: tuple[str, int]) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        verdicts = attack_verdicts(retain, test, forget, job[0], cap, job[1])
        return verdicts, time.perf_counter() - start

    threads = min(len(jobs), torch.get_num_threads())
    if threads <= 1:
        return [timed(job) for job in jobs]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(timed, jobs))


def mia_n(retain: Outputs, test: Outputs, cap: int) -> float:
    return float(min(len(retain.correct), len(test.correct), cap))


def efficacy(verdicts: torch.Tensor) -> float:
    """MIA-Efficacy from the verdicts on D_f: the percentage called non-member."""
    return 100.0 * verdicts.double().mean().item()


def mia_efficacy(
    retain: Outputs,
    test: Outputs,
    forget: Outputs,
    cap: int = 2000,
    seed: int = 0,
    features: tuple[str, ...] = ("confidence",),
) -> dict[str, float]:
    """``{"MIA": ..., "MIA_<feature>": ..., "mia_n": n}`` for the requested features."""
    result: dict[str, float] = {"mia_n": mia_n(retain, test, cap)}
    done = attacks(retain, test, forget, [(name, seed) for name in features], cap)
    for name, (verdicts, _) in zip(features, done, strict=True):
        result[f"MIA_{name}"] = efficacy(verdicts)
        if name == "confidence":
            result["MIA"] = result[f"MIA_{name}"]
    return result


def shadow_seeds(seed: int, draws: int) -> list[int]:
    """Seeds of ``draws`` shadow-set draws; the first is the headline's own."""
    return [seed + 1_000_003 * i for i in range(draws)]

"""Verdicts by rule: the claims a study tests, declared in its file before it runs, decided by code.

```toml
[verdicts]
margin = 1.1                 # "equivalent": the midpoint ratio lies within [1/1.1, 1.1]
alpha = 0.05                 # for every test, after the correction
correction = "holm"          # Holm over every test of the file, or "none"

[[verdicts.claim]]
name = "qat"
statement = "QAT with constant scaling factors is more robust than the baseline"
method = "qat"               # a method, a family of listed values, or an envelope (NAME-envelope)
versus = "baseline"
hardware = ["hardening-additive"]
need = "any"                 # per architecture: "any" member more robust, or "all" of them
# kind = "depth"             # instead: does the ratio grow with the architecture's depth?
```

The metric is the midpoint noise level (``docs/evaluate.md``), compared per seed as the log10
ratio of the method's to the versus method's. For each (architecture, hardware, member):

- a two-sided one-sample t test of the mean log ratio against 0 ("different"), and
- TOST, two one-sided t tests against the margin ("equivalent": within ``[-log m, log m]``).

Every p value of the file (both tests of every comparison, and the slope tests of depth claims)
is one family, adjusted by Holm's step-down method. A comparison is "equivalent within the
margin" when TOST holds (a difference inside the margin counts as none), else "more robust" /
"less robust" when the difference test holds, else "undecided"; a seed without a midpoint makes it
"no midpoint" (undecided). Per architecture a claim is *supported* when the members it needs are
more robust, *contradicted* when they cannot be (need "all": one member equivalent or less
robust; need "any": every member so), else *undecided*. A depth claim regresses the per-seed log
ratios on the depth of the architectures (``depth.DEPTH``): *supported* when the slope is above 0
by the test, *contradicted* when below, else undecided. The claim's verdict is "reproduced" when
supported for every architecture, "not reproduced" when contradicted for every one, else it
names the architectures of each outcome.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analog_onnx.arguments import check_table
from analog_onnx.errors import AnalogError
from analog_onnx.study.depth import DEPTH

CLAIM_KINDS = ("ratio", "depth")
NEEDS = ("any", "all")
CORRECTIONS = ("holm", "none")
ENVELOPE = "-envelope"  # the suffix of a NIT family's envelope method
# the keys of [verdicts] and of a claim, with their types
_RULES_TYPES = {"margin": float, "alpha": float, "correction": str, "claim": list[dict]}
_CLAIM_TYPES = {"name": str, "statement": str, "kind": str, "method": str, "versus": str, "hardware": list[str],
                "archs": list[str], "need": str}


class RulesError(AnalogError):
    """The [verdicts] table is invalid."""


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    kind: str  # "ratio" or "depth"
    methods: tuple[str, ...]  # the members (method names) the claim compares
    versus: str
    hardware: tuple[str, ...]
    archs: tuple[str, ...]
    need: str


@dataclass(frozen=True)
class Rules:
    margin: float
    alpha: float
    correction: str
    claims: tuple[Claim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": "log10 midpoint ratio, paired by seed", "margin": self.margin, "alpha": self.alpha,
                "correction": self.correction,
                "claims": [{"name": c.name, "statement": c.statement, "kind": c.kind, "methods": list(c.methods),
                            "versus": c.versus, "hardware": list(c.hardware), "archs": list(c.archs),
                            "need": c.need} for c in self.claims]}


def parse_rules(raw: Any, methods: Sequence[Any], archs: tuple[str, ...], hardware: tuple[str, ...]) -> Rules:
    """The [verdicts] table, checked against the study's methods, architectures and hardware."""
    if not isinstance(raw, dict):
        raise RulesError("[verdicts] must be a table")
    check_table(raw, _RULES_TYPES, "[verdicts]")
    margin, alpha = raw.get("margin", 1.1), raw.get("alpha", 0.05)
    if not 1 < margin < math.inf:
        raise RulesError(f"[verdicts] margin must be a ratio > 1, got {margin!r}")
    if not 0 < alpha < 1:
        raise RulesError(f"[verdicts] alpha must be in (0, 1), got {alpha!r}")
    correction = raw.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise RulesError(f"[verdicts] correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    entries = raw.get("claim")
    if not entries:
        raise RulesError("[verdicts]: add at least one [[verdicts.claim]]")
    names = {m.name for m in methods}
    families: dict[str, list[str]] = {}
    for m in methods:
        families.setdefault(m.group, []).append(m.name)
    for family in list(families):
        if is_envelope_family([m for m in methods if m.group == family]):
            families[family + ENVELOPE] = [family + ENVELOPE]
    claims = [_claim(entry, i, names, families, archs, hardware) for i, entry in enumerate(entries)]
    if len({c.name for c in claims}) != len(claims):
        raise RulesError("[[verdicts.claim]] names repeat")
    return Rules(float(margin), float(alpha), correction, tuple(claims))


def is_envelope_family(members: Sequence[Any]) -> bool:
    """Whether a family of methods has an envelope: two or more members swept by noise scale alone."""
    return len(members) > 1 and all([k for k, _ in m.swept] == ["noise_scale"] for m in members)


def _claim(entry: Any, index: int, names: set[str], families: dict[str, list[str]], archs: tuple[str, ...],
           hardware: tuple[str, ...]) -> Claim:
    where = f"[[verdicts.claim]] #{index + 1}"
    check_table(entry, _CLAIM_TYPES, where)
    name = entry.get("name")
    if not name:
        raise RulesError(f"{where}: name must be a non-empty string")
    where = f"claim {name}"
    kind, need = entry.get("kind", "ratio"), entry.get("need", "all")
    if kind not in CLAIM_KINDS or need not in NEEDS:
        raise RulesError(f"{where}: kind must be one of {', '.join(CLAIM_KINDS)} and need one of {', '.join(NEEDS)}")
    method, versus = entry.get("method"), entry.get("versus")
    if method not in families and method not in names:
        raise RulesError(f"{where}: method {method!r} is not a method, family or envelope of the study")
    if versus not in names:
        raise RulesError(f"{where}: versus {versus!r} is not a method of the study")
    members = tuple(families.get(method, [method]))
    if versus in members:
        raise RulesError(f"{where}: versus {versus!r} is one of the methods it is compared with")
    chosen_hardware = _subset(entry.get("hardware", list(hardware)), hardware, f"{where} hardware")
    chosen_archs = _subset(entry.get("archs", list(archs)), archs, f"{where} archs")
    if kind == "depth":
        shallow = [a for a in chosen_archs if a not in DEPTH]
        if shallow or len({DEPTH[a] for a in chosen_archs}) < 2:
            raise RulesError(f"{where}: a depth claim needs two or more architectures of known, different depth")
    return Claim(name, entry.get("statement", ""), kind, members, versus, chosen_hardware, chosen_archs, need)


def _subset(value: Any, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    if not value or not all(v in allowed for v in value):
        raise RulesError(f"{where} must be a non-empty list of {', '.join(allowed)}")
    return tuple(value)


# -- statistics -------------------------------------------------------------------------------
def t_test(values: Sequence[float]) -> float:
    """Two-sided p of a one-sample t test of mean 0 (1 for fewer than 2 values or no spread and mean 0)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return 1.0
    mean, se = _mean_se(values)
    if se == 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * stats.t.sf(abs(mean) / se, n - 1))


def tost(values: Sequence[float], bound: float) -> float:
    """p of two one-sided t tests that the mean lies inside (-bound, bound): the larger of the two."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return 1.0
    mean, se = _mean_se(values)
    if se == 0:
        return 0.0 if abs(mean) < bound else 1.0
    lower = stats.t.sf((mean + bound) / se, n - 1)
    upper = stats.t.cdf((mean - bound) / se, n - 1)
    return float(max(lower, upper))


def slope_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of y on x and the two-sided p of slope 0."""
    from scipy import stats

    if len(set(x)) < 2 or len(x) < 3:
        return 0.0, 1.0
    fit = stats.linregress(x, y)
    p = float(fit.pvalue)
    return float(fit.slope), p if math.isfinite(p) else (0.0 if fit.slope != 0 else 1.0)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


# -- deciding ----------------------------------------------------------------------------------
@dataclass
class Test:
    """One comparison of a claim: a member against the versus method on one (arch, hardware)."""

    claim: str
    arch: str
    hardware: str
    method: str
    log_ratios: tuple[float, ...] | None  # per seed; None when a seed has no midpoint
    p_different: float = 1.0
    p_equivalent: float = 1.0
    label: str = "no midpoint"
    index: int = -1  # of its difference test among all p values of the file (equivalence: the next)

    def ratio(self) -> float | None:
        return 10 ** (sum(self.log_ratios) / len(self.log_ratios)) if self.log_ratios else None


@dataclass
class DepthTest:
    claim: str
    hardware: str
    method: str
    points: tuple[tuple[int, float], ...]  # (depth, per-seed log ratio)
    slope: float = 0.0
    p: float = 1.0
    index: int = -1  # of its test among all p values of the file
    label: str = "undecided"


@dataclass
class Verdict:
    claim: Claim
    per_arch: dict[str, str]  # arch -> supported / contradicted / undecided (depth claims: "all")
    verdict: str


@dataclass
class Decision:
    rules: Rules
    tests: list[Test]
    depth_tests: list[DepthTest]
    verdicts: list[Verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"rules": self.rules.to_dict(),
                "tests": [{"claim": t.claim, "arch": t.arch, "hardware": t.hardware, "method": t.method,
                           "versus": _claim_named(self, t.claim).versus, "midpoint_ratio": t.ratio(),
                           "log10_ratios": list(t.log_ratios) if t.log_ratios else None,
                           "p_different_adjusted": t.p_different, "p_equivalent_adjusted": t.p_equivalent,
                           "label": t.label} for t in self.tests],
                "depth_tests": [{"claim": t.claim, "hardware": t.hardware, "method": t.method,
                                 "slope_per_layer": t.slope, "p_adjusted": t.p, "label": t.label,
                                 "points": [list(p) for p in t.points]} for t in self.depth_tests],
                "verdicts": [{"claim": v.claim.name, "statement": v.claim.statement, "per_arch": v.per_arch,
                              "verdict": v.verdict} for v in self.verdicts]}


def _claim_named(decision: Decision, name: str) -> Claim:
    return next(c for c in decision.rules.claims if c.name == name)


def decide(rules: Rules, log_ratios: Any) -> Decision:
    """Apply ``rules``; ``log_ratios(arch, hardware, method, versus)`` gives the per-seed log10
    midpoint ratios (None when a seed has no midpoint or a cell is missing)."""
    tests: list[Test] = []
    depth_tests: list[DepthTest] = []
    bound = math.log10(rules.margin)
    raw: list[float] = []
    for claim in rules.claims:
        for hardware in claim.hardware:
            for method in claim.methods:
                if claim.kind == "depth":
                    points = []
                    for arch in claim.archs:
                        values = log_ratios(arch, hardware, method, claim.versus)
                        points += [(DEPTH[arch], v) for v in values or ()]
                    slope, p = slope_test([d for d, _ in points], [v for _, v in points])
                    depth_tests.append(DepthTest(claim.name, hardware, method, tuple(points), slope, p, len(raw)))
                    raw.append(p)
                    continue
                for arch in claim.archs:
                    values = log_ratios(arch, hardware, method, claim.versus)
                    test = Test(claim.name, arch, hardware, method, tuple(values) if values else None)
                    if test.log_ratios:
                        test.index = len(raw)
                        raw += [t_test(values), tost(values, bound)]
                    tests.append(test)
    adjusted = holm(raw) if rules.correction == "holm" else raw
    for depth_test in depth_tests:  # each took its place in ``raw`` when tested: read it from there
        depth_test.p = adjusted[depth_test.index]
        decided = depth_test.p < rules.alpha
        depth_test.label = ("grows with depth" if depth_test.slope > 0 else "shrinks with depth") if decided \
            else "undecided"
    for test in tests:
        if not test.log_ratios:
            continue
        test.p_different, test.p_equivalent = adjusted[test.index], adjusted[test.index + 1]
        mean = sum(test.log_ratios) / len(test.log_ratios)
        if test.p_equivalent < rules.alpha:
            test.label = "equivalent within the margin"
        elif test.p_different < rules.alpha:
            test.label = "more robust" if mean > 0 else "less robust"
        else:
            test.label = "undecided"
    verdicts = [_verdict(claim, tests, depth_tests) for claim in rules.claims]
    return Decision(rules, tests, depth_tests, verdicts)


def _verdict(claim: Claim, tests: list[Test], depth_tests: list[DepthTest]) -> Verdict:
    if claim.kind == "depth":
        labels = [t.label for t in depth_tests if t.claim == claim.name]
        outcome = "supported" if labels and all(x == "grows with depth" for x in labels) else \
            "contradicted" if labels and all(x == "shrinks with depth" for x in labels) else "undecided"
        return Verdict(claim, {"all": outcome}, _sentence({"all": outcome}))
    per_arch = {}
    for arch in claim.archs:
        labels = [t.label for t in tests if t.claim == claim.name and t.arch == arch]
        good = [x == "more robust" for x in labels]
        against = [x in ("less robust", "equivalent within the margin") for x in labels]
        if claim.need == "all":
            outcome = "supported" if all(good) else "contradicted" if any(against) else "undecided"
        else:
            outcome = "supported" if any(good) else "contradicted" if all(against) else "undecided"
        per_arch[arch] = outcome
    return Verdict(claim, per_arch, _sentence(per_arch))


def _sentence(per_arch: dict[str, str]) -> str:
    outcomes = set(per_arch.values())
    if outcomes == {"supported"}:
        return "reproduced"
    if outcomes == {"contradicted"}:
        return "not reproduced"
    words = {"supported": "reproduced", "contradicted": "not reproduced", "undecided": "undecided"}
    parts = [f"{words[o]} for {', '.join(a for a, x in per_arch.items() if x == o)}"
             for o in ("supported", "contradicted", "undecided") if o in outcomes]
    return "; ".join(parts)

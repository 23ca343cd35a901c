"""A gate that decides: when a suite's pass-rate verdict is ``inconclusive``, draw the candidate's answers again and
look again, under a group-sequential test that keeps the false-alarm rate at alpha over all the looks.

What is tested. Each paired case i has a true pass probability per draw, p_i in the baseline and q_i now; the
suite's change is the mean of q_i - p_i. *False alarm* is a ``regression`` verdict when nothing changed (q_i = p_i
for every case); this is the rate the gate keeps at or below alpha, and the one its goal names. The allowed drop
(``pass_rate:-5%``) is an effect size on the *observed* drop, not a null hypothesis: when the true drop is exactly
the allowed one, the gate says ``regression`` often (that rate is reported, not bounded), unless ``margin=True``,
which tests against the allowed drop itself (then the rate at a true drop of exactly the allowed one is <= alpha).

Why every paired case is redrawn, not only the discordant ones. A case is redrawn because its first draw disagreed
with the baseline: given that, the *only* unbiased estimate of the case's pass probability is that first draw
(the family of outcomes of "draw once; if it disagrees with the baseline, draw k more" is complete, so any unbiased
function of it is the first draw), and McNemar's conditional test is unchanged by the extra draws (under no change
the baseline is either member of a discordant pair with probability 1/2 whatever is drawn after). Pooling the extra
draws of discordant cases only is biased, by p(1-p)(2p-1)k/(k+1) per case: towards false alarms for cases that
mostly fail. So a redraw look draws every paired case the same number of times, whatever its outcomes; the
statistic is then the mean over cases of (mean of the candidate's draws - the baseline's value), whose looks have
independent increments, and standard group-sequential boundaries hold. Under no change the correlation of two
looks' statistics is known exactly from the numbers of draws alone (sqrt((1/r + 1/m_k) / (1/r + 1/m_j)) with r
baseline draws and m_j, m_k candidate draws per case), so the boundaries are computed once per design.

Alpha spending: Lan-DeMets, an O'Brien-Fleming-type spending function of the information fraction t (the default:
little alpha at the run's own look, most at the last; by simulation it has more power than the Pocock-type
alpha * ln(1 + (e - 1) t), also offered). With redraws the run's look reopens a drop past half the allowed one
(``reopen``): a 10-point drop shows as 5 points or less in 12% of runs of 200 noisy cases, which the current gate
calls ok.
Stopping as ``ok`` when the observed drop is within the allowed one is a non-binding futility stop: it only lowers
the false-alarm rate. The first look uses the exact sign test (McNemar) at its spent alpha; later looks a z test
with the variance estimated under no change (sum of d_i squared, as McNemar's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

SPENDING = ("pocock", "obf")
DEFAULT_SCHEDULE = (1, 1, 2)  # extra candidate draws per paired case at each redraw look (cumulative: 2, 3, 5)


def spent(t: float, alpha: float, kind: str = "pocock") -> float:
    """Alpha spent by information fraction t (0 < t <= 1), Lan-DeMets."""
    from scipy.stats import norm

    t = min(max(t, 1e-9), 1.0)
    if kind == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    if kind == "obf":
        return float(2 * (1 - norm.cdf(norm.ppf(1 - alpha / 2) / math.sqrt(t))))
    raise ValueError(f"unknown spending function {kind!r}: expected one of {', '.join(SPENDING)}")


@lru_cache(maxsize=256)
def boundaries(alpha: float, info: tuple[float, ...], kind: str = "pocock") -> tuple[float, ...]:
    """One-sided z boundaries c_1..c_K: P(no Z_j >= c_j before k, Z_k >= c_k) = spent(t_k) - spent(t_{k-1}) under no
    change, for looks with the given information (increasing, any scale). Z_k = S_k / sqrt(I_k) with S a sum of
    independent normal increments of variance I_k - I_{k-1} (Armitage, McPherson and Rowe's recursive integration
    on a grid: fast and exact to ~1e-5)."""
    import numpy as np
    from scipy.optimize import brentq
    from scipy.stats import norm

    t = [i / info[-1] for i in info]
    c1 = float(norm.ppf(1 - spent(t[0], alpha, kind)))
    bounds = [c1]
    top = 9.0 * math.sqrt(info[-1])
    grid = np.linspace(-top, c1 * math.sqrt(info[0]), 1501)
    h = grid[1] - grid[0]
    dens = norm.pdf(grid / math.sqrt(info[0])) / math.sqrt(info[0])  # density of S_1 below its boundary
    weights = np.full(len(grid), h)
    weights[[0, -1]] = h / 2
    for k in range(1, len(info)):
        target = spent(t[k], alpha, kind) - spent(t[k - 1], alpha, kind)
        sd = math.sqrt(info[k] - info[k - 1])
        mass = dens * weights
        root = math.sqrt(info[k])

        def crossing(c: float, mass: Any = mass, grid: Any = grid, sd: float = sd, root: float = root,
                     target: float = target) -> float:
            return float((mass * norm.sf((c * root - grid) / sd)).sum()) - target

        c = float(brentq(crossing, -2.0, 9.0, xtol=1e-6)) if target > 0 and crossing(-2.0) > 0 else math.inf
        bounds.append(c)
        if k + 1 < len(info):
            upper = (c if math.isfinite(c) else 9.0) * root
            new = np.linspace(-top, upper, 1501)
            dens = (norm.pdf((new[:, None] - grid[None, :]) / sd) / sd) @ mass
            grid, h = new, new[1] - new[0]
            weights = np.full(len(grid), h)
            weights[[0, -1]] = h / 2
    return tuple(bounds)


@dataclass(frozen=True)
class Design:
    """A sequential gate: the run's draws, then redraw looks of ``schedule[j]`` more draws per paired case."""

    alpha: float = 0.05
    max_drop: float = 5.0  # points
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    spending: str = "obf"
    margin: bool = False  # test against the allowed drop instead of no change
    # At a redraw look before the last, stop as ok when the drop is within the allowed one? Redrawing on (False)
    # keeps some power that an early stop loses, at the price of more redraws.
    futility: bool = False
    # The run's own look says ok when the drop is within the allowed one; with redraws, a drop above this share of
    # the allowed one is looked at again (1.0: only an inconclusive verdict is; 0.5: a drop past half the allowed).
    reopen: float = 0.5

    def draws(self, first: int = 1) -> list[int]:
        """Cumulative candidate draws per case at each look."""
        out = [first]
        for extra in self.schedule:
            out.append(out[-1] + extra)
        return out

    def bounds(self, first: int = 1, base_draws: int = 1) -> tuple[float, ...]:
        info = tuple(1.0 / (1.0 / base_draws + 1.0 / m) for m in self.draws(first))
        return boundaries(self.alpha, info, self.spending)

    def nominal(self, first: int = 1, base_draws: int = 1) -> list[float]:
        """The one-sided p-value each look must beat."""
        from scipy.stats import norm

        return [float(1 - norm.cdf(c)) for c in self.bounds(first, base_draws)]


@dataclass
class Look:
    look: int  # 1 = the run itself
    draws: int  # candidate draws per paired case so far
    drop: float  # observed drop of the mean pass probability, points (negative: a gain)
    z: float
    p_value: float
    nominal: float  # the p-value this look had to beat
    decision: str  # regression | ok | continue | inconclusive

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def look_statistic(base: Sequence[float], draws: Sequence[Sequence[int]], margin_points: float = 0.0
                   ) -> tuple[float, float, float]:
    """(observed drop in points, z, one-sided p) of the paired mean test: d_i = mean of case i's candidate draws
    minus its baseline value; the variance under no change is sum(d_i^2)/n^2 (McNemar's, for one draw each)."""
    n = len(base)
    if n == 0:
        return 0.0, 0.0, 1.0
    d = [sum(c) / len(c) - b for b, c in zip(base, draws, strict=True)]
    drop = -100.0 * sum(d) / n
    var = sum(x * x for x in d) / (n * n)
    if var <= 0:
        return drop, 0.0, 1.0 if drop - margin_points <= 0 else 0.0
    z = (drop - margin_points) / 100.0 / math.sqrt(var)
    return drop, z, tail(z, sum(1 for x in d if x != 0))


def tail(z: Any, nonzero: Any) -> Any:
    """One-sided p of the z statistic, read off Student's t with (cases that differ - 1) degrees of freedom: the
    normal tail is too thin when a few noisy cases carry the whole sum (20 cases, 4 noisy: 7.8% false alarms
    instead of 5% by simulation)."""
    import numpy as np
    from scipy.stats import t

    return t.sf(z, np.maximum(np.asarray(nonzero) - 1, 1)) if np.ndim(z) else float(t.sf(z, max(int(nonzero) - 1, 1)))


def first_look_p(base: Sequence[float], draws: Sequence[Sequence[int]], margin_points: float = 0.0) -> float:
    """The run's own test: McNemar's exact sign test when both sides have one 0/1 value per case, else the z test."""
    if margin_points == 0 and all(len(c) == 1 for c in draws) and all(b in (0, 1, 0.0, 1.0) for b in base):
        from pytest_llmeval.results.gate import sign_test_p

        worse = sum(1 for b, c in zip(base, draws, strict=True) if b == 1 and c[0] == 0)
        better = sum(1 for b, c in zip(base, draws, strict=True) if b == 0 and c[0] == 1)
        return sign_test_p(worse, better)
    return look_statistic(base, draws, margin_points)[2]


def decide(design: Design, base: Sequence[float], draws: Sequence[Sequence[int]], look: int, *,
           first: int = 1, base_draws: int = 1) -> Look:
    """The decision at ``look`` (1-based) from the baseline values and every candidate draw so far."""
    nominal = design.nominal(first, base_draws)
    margin = design.max_drop if design.margin else 0.0
    drop, z, p = look_statistic(base, draws, margin)
    if look == 1:
        p = first_look_p(base, draws, margin)
    m = len(draws[0]) if draws else first
    last = look >= len(nominal)
    if look == 1 and drop <= design.max_drop * design.reopen or \
            drop <= design.max_drop and (last or design.futility):
        decision = "ok"
    elif p < nominal[look - 1] and drop > design.max_drop:
        decision = "regression"
    else:
        decision = "continue" if look < len(nominal) else "inconclusive"
    return Look(look, m, drop, z, p, nominal[look - 1], decision)


# ---------------------------------------------------------------------------------------------- planning


def redraws_to_confirm(design: Design, n: int, drop: float, var_first: float, *, first: int = 1,
                       base_draws: int = 1) -> tuple[int, int] | None:
    """If the observed drop (points) held, at which look would it be confirmed and after how many redrawn answers:
    (look, redraws), or None past the design's last look. ``var_first`` is sum(d_i^2)/n at the first look."""
    if drop <= design.max_drop or n == 0:
        return None
    margin = design.max_drop if design.margin else 0.0
    bounds = design.bounds(first, base_draws)
    ms = design.draws(first)
    scale = 1.0 / base_draws + 1.0 / first
    for k, (m, c) in enumerate(zip(ms, bounds, strict=True)):
        var_k = var_first * (1.0 / base_draws + 1.0 / m) / scale / n
        if var_k > 0 and (drop - margin) / 100.0 / math.sqrt(var_k) >= c:
            return k + 1, n * (m - first)
    return None


def redraw_advice(paired: int, worse: int, better: int, drop: float | None, *, alpha: float, max_drop: float
                  ) -> str | None:
    """For ``llmeval compare``: how many redrawn answers an inconclusive suite would need, if its observed drop held
    (one draw per case each side; the default design)."""
    if drop is None or paired == 0 or drop <= max_drop:
        return None
    design = Design(alpha=alpha, max_drop=max_drop)
    plan = redraws_to_confirm(design, paired, drop, (worse + better) / paired)
    if plan is None:
        return (f"redraws: even {paired * sum(design.schedule)} redrawn answers ({len(design.schedule)} looks) would "
                f"not confirm a {drop:.1f}-point drop over {paired} paired cases; more cases would")
    look, answers = plan
    if look == 1:
        return None
    return (f"redraws: if the {drop:.1f}-point drop holds, --llm-gate-redraws {answers} would confirm it (look "
            f"{look}: {design.draws()[look - 1]} draws per case, {answers} answers drawn again)")


# ---------------------------------------------------------------------------------------------- simulation


@dataclass
class SimResult:
    trials: int
    false_alarm: float = 0.0
    power: float = 0.0
    inconclusive: float = 0.0
    mean_redraws: float = 0.0  # answers drawn again per trial (all trials, the null's and the drop's)
    redraws_when_drawn: float = 0.0  # per trial that redrew at all
    redrawn_share: float = 0.0  # share of trials that redrew
    looks: dict[str, float] = field(default_factory=dict)

    def row(self) -> str:
        return (f"false alarm {self.false_alarm:6.1%}  power {self.power:6.1%}  inconclusive {self.inconclusive:6.1%}"
                f"  redrew {self.redrawn_share:6.1%} of runs, {self.mean_redraws:7.1f} answers/run")


def mixes(kind: str, n: int, rng: Any) -> Any:
    """Baseline pass probabilities: ``noisy`` (uniform 0.2-1.0, as with sampling or flaky judges) or ``steady``
    (80% of the cases always pass or always fail, 70:30, the rest uniform 0.2-1.0) or ``hard`` (uniform 0-0.5)."""
    import numpy as np

    noisy = rng.uniform(0.2, 1.0, n)
    if kind == "noisy":
        return noisy
    if kind == "hard":  # mostly failing, noisy
        return rng.uniform(0.0, 0.5, n)
    if kind == "steady":
        fixed = rng.random(n) < 0.8
        return np.where(fixed, np.where(rng.random(n) < 0.7, 1.0, 0.0), noisy)
    raise ValueError(f"unknown case mix {kind!r}")


def lowered(p: Any, points: float) -> Any:
    """Candidate probabilities whose mean is ``points`` lower: cases that always passed break (always fail now),
    as many as make the drop, when there are enough of them (a prompt change that breaks some cases); else every
    case's probability falls by the same amount (clipped to [0, 1], then topped up: a noisier model)."""
    import numpy as np

    n = len(p)
    k = int(round(n * points / 100.0))
    steady = np.flatnonzero(p == 1.0)
    if len(steady) >= k:
        q = p.copy()
        q[steady[:k]] = 0.0
        return q
    shift = points / 100.0
    for _ in range(50):  # clip, then shift more until the mean drop is the one asked for
        q = np.clip(p - shift, 0.0, 1.0)
        gap = points / 100.0 - float(p.mean() - q.mean())
        if abs(gap) < 1e-9:
            break
        shift += gap
    return q


def simulate(p: Any, q: Any, design: Design | None, *, trials: int, seed: int) -> SimResult:
    """Run the gate ``trials`` times on cases with baseline probabilities p and candidate probabilities q (one draw
    each side at the run; ``design=None``: the current gate, no redraws). Vectorised over trials."""
    import numpy as np
    from scipy.stats import binom, norm

    rng = np.random.default_rng(seed)
    n = len(p)
    base = (rng.random((trials, n)) < p).astype(float)
    hits = (rng.random((trials, n)) < q).astype(float)  # candidate passes so far, per case
    m = 1
    d = design or Design(schedule=())
    margin = d.max_drop if d.margin else 0.0
    nominal = d.nominal() if design is not None else [d.alpha]
    worse = ((base == 1) & (hits == 0)).sum(1)
    better = ((base == 0) & (hits == 1)).sum(1)
    drop = 100.0 * (worse - better) / n
    if margin == 0:
        p1 = np.where(worse + better > 0, binom.sf(worse - 1, worse + better, 0.5), 1.0)
    else:
        var = (worse + better) / n / n
        p1 = np.where(var > 0, 1 - norm.cdf((drop - margin) / 100.0 / np.sqrt(np.where(var > 0, var, 1))), 1.0)
    verdict = np.full(trials, "", dtype=object)
    verdict[drop <= d.max_drop * (d.reopen if design is not None else 1.0)] = "ok"
    verdict[(verdict == "") & (p1 < nominal[0]) & (drop > d.max_drop)] = "regression"
    if design is None or not d.schedule:
        verdict[verdict == ""] = np.where(drop[verdict == ""] > d.max_drop, "", "ok")
    redraws = np.zeros(trials)
    looks = {"1": float((verdict != "").mean())}
    for k, extra in enumerate(d.schedule if design is not None else (), start=2):
        open_ = verdict == ""
        if not open_.any():
            break
        hits[open_] += rng.binomial(extra, np.broadcast_to(q, (int(open_.sum()), n)))
        redraws[open_] += extra * n
        m += extra
        dd = hits[open_] / m - base[open_]
        drop_k = -100.0 * dd.mean(1)
        var = (dd * dd).sum(1) / n / n
        z = np.where(var > 0, (drop_k - margin) / 100.0 / np.sqrt(np.where(var > 0, var, 1)), 0.0)
        pk = tail(z, (dd != 0).sum(1))
        v = np.full(int(open_.sum()), "", dtype=object)
        if d.futility or k == len(nominal):
            v[drop_k <= d.max_drop] = "ok"
        v[(v == "") & (pk < nominal[k - 1]) & (drop_k > d.max_drop)] = "regression"
        verdict[open_] = v
        looks[str(k)] = float((v != "").sum() / trials)
    verdict[verdict == ""] = "inconclusive"
    regression = float((verdict == "regression").mean())
    drew = redraws > 0
    return SimResult(trials, false_alarm=regression, power=regression,
                     inconclusive=float((verdict == "inconclusive").mean()), mean_redraws=float(redraws.mean()),
                     redraws_when_drawn=float(redraws[drew].mean()) if drew.any() else 0.0,
                     redrawn_share=float(drew.mean()), looks=looks)


# ---------------------------------------------------------------------------------------------- --llm-repeat auto

AUTO_MAX = 5  # --llm-repeat auto: at most this many draws per case


class AutoRepeat(int):
    """``--llm-repeat auto[:MAX]``: at most MAX draws per case, stopping as soon as the case's outcome under its
    pass_if is settled (an int: MAX, where a number of draws is asked)."""

    def __repr__(self) -> str:
        return f"AutoRepeat({int(self)})"


def parse_repeat(raw: str) -> int:
    """``3`` -> 3; ``auto`` -> AutoRepeat(5); ``auto:7`` -> AutoRepeat(7); ValueError says what is expected."""
    text = str(raw).strip().lower()
    if text == "auto" or text.startswith("auto:"):
        limit = text.partition(":")[2].strip() or str(AUTO_MAX)
        if not limit.isdigit() or int(limit) < 1:
            raise ValueError("expected a whole number >= 1, 'auto' or 'auto:MAX' (MAX a whole number >= 1)")
        return AutoRepeat(int(limit))
    if not text.isdigit() or int(text) < 1:
        raise ValueError("expected a whole number >= 1, 'auto' or 'auto:MAX'")
    return int(text)


def settled(passed: int, failed: int, pass_if: str, limit: int) -> bool:
    """Whether a case's outcome after ``limit`` draws is already decided by these (curtailed sampling: stopping here
    gives the outcome all ``limit`` draws would give, with fewer of them)."""
    if pass_if == "all":
        return failed >= 1 or passed >= limit
    if pass_if == "any":
        return passed >= 1 or failed >= limit
    return 2 * passed > limit or 2 * failed >= limit  # majority: more than half of the limit pass


def first_draws(limit: int, pass_if: str) -> int:
    """The draws an auto-repeated case makes at once (the fewest that can settle it): 1, or a bare majority."""
    return limit // 2 + 1 if pass_if == "majority" else 1

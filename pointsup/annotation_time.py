"""Annotation-time model of box, mask and point supervision (paper sec. 3.1, 4.2, appendix C).

Per instance, an annotation pipeline first *finds and names* the objects, then draws one
annotation form on each. Appendix C, from the COCO creators' timings:
    categorisation 28.8 s + spotting 14.4 s = t = 43.2 s   (the same for every form)
    box  B:    t + 7.0            (extreme clicking [41])                      = 50.2 s
    mask M:    t + 79.2           (COCO polygons, 22 h per 1,000 instances)    = 122.4 s
    points P_N: t + 7.0 + 0.9 N   (box + N binary point labels, appendix A)    = 59.2 s for N = 10

Table 6: total time = instances x seconds per instance (COCO train2017: 849,949 instances
-> B 493, M 1204, P10 582 days; the paper truncates to whole days).

Figure 6: the same AP (31.8 on COCO) needs all of train2017 with boxes (BoxInst) but only
a fraction of it with masks (~0.4) or points (~0.5) for Mask R-CNN. As a function of t:
    T_form(t) = fraction_form x instances x (t + c_form),   c = per-instance cost without t.
Two forms cost the same where f_a (t + c_a) = f_b (t + c_b), i.e.
    t* = (f_b c_b - f_a c_a) / (f_a - f_b),
which gives t ~ 2 s (points vs boxes) and t ~ 237 s (points vs masks): points are the
cheapest way to that AP for pipelines whose find-and-name stage takes 2 to 237 s.

    python -m pointsup.annotation_time [--seconds-per-point 0.9 | --timing labels.json]
        [--instances 849949] [--num-points 10] [--plot figure6.png]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

COCO_TRAIN2017_INSTANCES = 849_949
SECONDS_PER_DAY = 86_400.0
# Paper Table 6 (days) and Figure 6 (seconds), printed next to ours for the defaults.
PAPER_TABLE6_DAYS = {"B": 493, "M": 1204, "P10": 582}
PAPER_FIGURE6_CROSSOVERS = (2.0, 237.0)


@dataclass(frozen=True)
class Costs:
    """Seconds per instance of each stage (appendix C) and N points per object."""

    categorization: float = 28.8
    spotting: float = 14.4
    box: float = 7.0
    mask: float = 79.2
    point: float = 0.9
    num_points: int = 10

    @property
    def find_and_name(self) -> float:
        """t: the categorisation + spotting stages, shared by every annotation form."""
        return self.categorization + self.spotting

    def form_costs(self) -> dict[str, float]:
        """Seconds per instance of each form *without* t (the c_form of the module docstring)."""
        return {"B": self.box, "M": self.mask, f"P{self.num_points}": self.box + self.point * self.num_points}


def table6(costs: Costs, instances: int) -> dict[str, tuple[float, float]]:
    """{form: (seconds per instance, total days)} including the find-and-name stages."""
    out = {}
    for form, c in costs.form_costs().items():
        per_instance = costs.find_and_name + c
        out[form] = (per_instance, instances * per_instance / SECONDS_PER_DAY)
    return out


def total_days(fraction: float, form_cost: float, t: float, instances: int) -> float:
    """Days to annotate `fraction` of `instances` when finding and naming takes t s each."""
    return fraction * instances * (t + form_cost) / SECONDS_PER_DAY


def crossover(fraction_a: float, cost_a: float, fraction_b: float, cost_b: float) -> float | None:
    """t where forms a and b cost the same (None when their lines are parallel)."""
    if fraction_a == fraction_b:
        return None
    return (fraction_b * cost_b - fraction_a * cost_a) / (fraction_a - fraction_b)


def cheapest_interval(form: str, costs: dict[str, float], fractions: dict[str, float]) -> tuple[float, float] | None:
    """[t_lo, t_hi] (t >= 0) where `form` is cheaper than every other form, or None if nowhere.

    Against a form with a larger fraction, `form` wins for t above the crossover (its line
    is less steep); against a smaller fraction, below it.
    """
    lo, hi = 0.0, math.inf
    f, c = fractions[form], costs[form]
    for other in costs:
        if other == form:
            continue
        t_star = crossover(f, c, fractions[other], costs[other])
        if t_star is None:
            if f * c >= fractions[other] * costs[other]:
                return None  # parallel and never cheaper
        elif f < fractions[other]:
            lo = max(lo, t_star)
        else:
            hi = min(hi, t_star)
    return (lo, hi) if lo < hi else None


def plot_figure6(path: str, costs: Costs, fractions: dict[str, float], instances: int,
                 t_max: float = 300.0, coco_t: float | None = None) -> None:
    """Figure 6 as a PNG: total days against the find-and-name time t, one line per form."""
    from pointsup.utils.io import atomic_save
    from pointsup.utils.logging import new_figure

    form_costs = costs.form_costs()
    ts = [t_max * k / 300 for k in range(301)]
    fig, ax = new_figure(figsize=(6.4, 4.2))
    for form, c in form_costs.items():
        ax.plot(ts, [total_days(fractions[form], c, t, instances) for t in ts],
                label=f"{form} ({fractions[form]:.0%} of the instances)")
    interval = cheapest_interval(f"P{costs.num_points}", form_costs, fractions)
    if interval is not None:
        ax.axvspan(interval[0], min(interval[1], t_max), color="tab:green", alpha=0.08,
                   label=f"points cheapest: {interval[0]:.0f}-{interval[1]:.0f} s")
    if coco_t is not None:
        ax.axvline(coco_t, color="gray", linestyle=":", label=f"COCO pipeline, t = {coco_t:.1f} s")
    ax.set_xlabel("categorisation + spotting time t per instance (s)")
    ax.set_ylabel("total annotation time (days)")
    ax.set_title(f"Time to the same AP, {instances:,} instances (paper Fig. 6)")
    ax.set_xlim(0, t_max)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda tmp_path: fig.savefig(tmp_path, dpi=120))


def report(costs: Costs, instances: int, fractions: dict[str, float]) -> str:
    """Table 6 and the Figure 6 crossovers as text."""
    defaults = costs == Costs() and instances == COCO_TRAIN2017_INSTANCES
    lines = [f"Per instance: categorisation {costs.categorization:g} s + spotting {costs.spotting:g} s "
             f"= t = {costs.find_and_name:.1f} s; box {costs.box:g} s, mask {costs.mask:g} s, "
             f"point {costs.point:.3g} s x {costs.num_points}",
             f"Table 6: {instances:,} instances",
             f"  {'form':<5} {'s/instance':>10} {'hours':>10} {'days':>9}" + ("   paper" if defaults else "")]
    for form, (per_instance, days) in table6(costs, instances).items():
        paper = f"   {PAPER_TABLE6_DAYS[form]}" if defaults else ""
        lines.append(f"  {form:<5} {per_instance:>10.1f} {days * 24:>10.1f} {days:>9.1f}{paper}")

    form_costs = costs.form_costs()
    point_form = f"P{costs.num_points}"
    lines.append("Figure 6: same AP from " + ", ".join(f"{f} {fractions[f]:g}" for f in form_costs)
                 + " of the instances")
    for other in ("B", "M"):
        t_star = crossover(fractions[point_form], form_costs[point_form], fractions[other], form_costs[other])
        lines.append(f"  {point_form} and {other} cost the same at t = "
                     + ("never (parallel)" if t_star is None else f"{t_star:.1f} s"))
    interval = cheapest_interval(point_form, form_costs, fractions)
    if interval is None:
        lines.append(f"  {point_form} is never the cheapest")
    else:
        paper = " (paper: 2 and 237 s)" if defaults and fractions == {"B": 1.0, "M": 0.4, "P10": 0.5} else ""
        lines.append(f"  {point_form} is the cheapest for {interval[0]:.1f} s < t < {interval[1]:.1f} s{paper}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pointsup.annotation_time",
                                     description="Annotation time of boxes, masks and points (paper Table 6, Figure 6).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--instances", type=int, default=COCO_TRAIN2017_INSTANCES,
                        help="number of instances (COCO train2017's)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--seconds-per-point", type=float, default=None, help="seconds per point; None = 0.9 (paper)")
    speed.add_argument("--timing", help="a pointsup.annotate output: use its measured seconds per point; None = not used")
    parser.add_argument("--num-points", type=int, default=None, help="N of P_N; None = the --timing job's, else 10")
    parser.add_argument("--box", type=float, default=7.0, help="seconds per box")
    parser.add_argument("--mask", type=float, default=79.2, help="seconds per polygon mask")
    parser.add_argument("--categorization", type=float, default=28.8, help="seconds per instance")
    parser.add_argument("--spotting", type=float, default=14.4, help="seconds per instance")
    parser.add_argument("--box-fraction", type=float, default=1.0, help="share of the instances boxes need")
    parser.add_argument("--mask-fraction", type=float, default=0.4, help="share of the instances masks need")
    parser.add_argument("--point-fraction", type=float, default=0.5, help="share of the instances points need")
    parser.add_argument("--plot", help="write Figure 6 to this PNG; None = no plot")
    parser.add_argument("--t-max", type=float, default=300.0, help="x-axis end of the plot (s)")
    args = parser.parse_args(argv)

    point = 0.9 if args.seconds_per_point is None else args.seconds_per_point
    num_points = 10 if args.num_points is None else args.num_points
    if args.timing:
        from pointsup.annotate.summary import load_job_block, point_seconds

        block = load_job_block(args.timing)
        work, _ = point_seconds(block)
        if len(work) == 0:
            parser.error(f"{args.timing} has no timed labels yet")
        point = float(work.mean())
        num_points = int(block["num_points"]) if args.num_points is None else args.num_points
        print(f"measured in {args.timing}: {point:.3f} s per point over {len(work)} points")
    costs = Costs(categorization=args.categorization, spotting=args.spotting, box=args.box, mask=args.mask,
                  point=point, num_points=num_points)
    fractions = {"B": args.box_fraction, "M": args.mask_fraction, f"P{num_points}": args.point_fraction}
    print(report(costs, args.instances, fractions))
    if args.plot:
        plot_figure6(args.plot, costs, fractions, args.instances, args.t_max, coco_t=costs.find_and_name)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()

"""The harmful-auxiliary check's section of docs/benchmarks.md (``bench.harmful``'s JSON): per variant, how often
the harmful task ends with the lowest weight and below a quarter of the largest, how far the weights moved, and the
validation error against the fixed twin's on the same seeds."""

from __future__ import annotations

from typing import Any

from auxray.bench.table import mean_std

HARMFUL, HELPFUL = "harmful", "helpful"


def moved(row: dict[str, Any]) -> float:
    """The mean over tasks of |final - initial| / initial weight: how far learning moved the weights."""
    start, end = row["initial_weights"], row["weights"]
    return sum(abs(end[k] - start[k]) / start[k] for k in start) / len(start)


def harmful_lowest(row: dict[str, Any]) -> bool:
    """Whether the harmful task ends with a weight strictly below every other task's."""
    w = row["weights"]
    return all(w[HARMFUL] < v for k, v in w.items() if k != HARMFUL)


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary per variant, in the JSON's order; `mse_vs_twin` is the mean over seeds of its validation MSE
    minus its own fixed twin's on the same seed (negative: learning helped; a fixed variant has no twin)."""
    rows = data["rows"]
    mse = {(r["variant"], r["seed"]): r["val_mse"] for r in rows}
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        twin = data["twins"].get(variant)
        diffs = [r["val_mse"] - mse[twin, r["seed"]] for r in mine if (twin, r["seed"]) in mse]
        out.append(
            {
                "variant": variant,
                "twin": twin,
                "seeds": len(mine),
                "harmful_lowest": sum(harmful_lowest(r) for r in mine),
                "harmful_below_quarter": sum(r["weights"][HARMFUL] < 0.25 * max(r["weights"].values()) for r in mine),
                "helpful_weight": mean_std([r["weights"][HELPFUL] for r in mine])[0],
                "harmful_weight": mean_std([r["weights"][HARMFUL] for r in mine])[0],
                "moved": mean_std([moved(r) for r in mine])[0],
                "val_mse": mean_std([r["val_mse"] for r in mine]),
                "mse_vs_twin": mean_std(diffs)[0] if diffs else 0.0,
                "better_than_twin": sum(d < 0 for d in diffs),
            }
        )
    return out


def render_harmful(data: dict[str, Any]) -> str:
    """The check's table, one row per variant beside its twin's name (the twins last, their learning columns
    blank)."""
    lines = [
        f"Synthetic task with one helpful and one harmful auxiliary (`{data['config']}`), seeds "
        f"{', '.join(map(str, data['seeds']))}: weights after the last epoch (means over seeds); *moved* is the mean "
        f"over tasks of |final − initial| / initial weight; ΔMSE is the validation MSE minus the variant's fixed "
        f"twin's on the same seed (the same initial weights, nothing learned: `equal` is every weight 1, "
        f"`<variant>_twin` the variant frozen).",
        "",
        "| variant | twin | harmful weight lowest | harmful < ¼ largest | helpful weight | harmful weight | moved "
        "| val MSE | ΔMSE vs twin | better than twin |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summarise(data):
        n = s["seeds"]
        learned = s["twin"] is not None
        cells = [
            s["variant"],
            f"`{s['twin']}`" if learned else "–",
            f"{s['harmful_lowest']}/{n}" if learned else "–",
            f"{s['harmful_below_quarter']}/{n}" if learned else "–",
            f"{s['helpful_weight']:.2f}",
            f"{s['harmful_weight']:.2f}",
            f"{s['moved']:.2f}" if learned else "–",
            "{:.3g} ± {:.3g}".format(*s["val_mse"]),
            f"{s['mse_vs_twin']:+.3g}" if learned else "–",
            f"{s['better_than_twin']}/{n}" if learned else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

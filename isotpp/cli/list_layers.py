"""``--list-layers``: a model's prunable layer names, in forward order, with what pruning them means."""

from __future__ import annotations

from typing import Any


def layer_rows(model) -> list[dict[str, Any]]:
    """One row per conv/dense layer of ``model`` (forward order): name, width, group, status.

    ``status`` is ``"prunable"`` (a layer that can be pruned alone), ``"stream"``
    (it ties a residual stream: a pattern must match every layer of ``group``
    or none) or ``"fixed"`` (cannot be pruned; ``why`` says why).
    """
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.models import widths_of
    from isotpp.pruning.groups import channel_groups

    by_layer = {layer: g for g in channel_groups(model) for layer in g.layers}
    rows = []
    for name, width in widths_of(model).items():
        g = by_layer.get(name)
        if g is None or not g.prunable:
            status, why = "fixed", (g.why_not if g is not None else "it feeds no prunable channel group")
        elif len(g.layers) > 1:
            status, why = "stream", f"ties residual stream {g.name} ({len(g.layers)} layers pruned together)"
        else:
            status, why = "prunable", ""
        rows.append({"layer": name, "width": int(width), "group": g.name if g is not None else name,
                     "status": status, "why": why})
    return rows


def layers_table(model, title: str) -> str:
    """:func:`layer_rows` as a printable table with a legend."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.reporting.tables import markdown_table

    rows = layer_rows(model)
    marks = {"prunable": "yes", "stream": "only with its stream", "fixed": "no"}
    body = markdown_table(["layer", "width", "prune?", "note"],
                          [[r["layer"], str(r["width"]), marks[r["status"]], r["why"]] for r in rows])
    n = {k: sum(r["status"] == k for r in rows) for k in marks}
    return (f"{title}: {len(rows)} layers in forward order; {n['prunable']} prunable alone, {n['stream']} tie a "
            f"residual stream, {n['fixed']} fixed\n{body}\n"
            "Ratios are GLOB:RATIO over these names, e.g. --ratios '*layer*.conv1:0.5'.")

"""What one arm of a run spec becomes on the cluster: the chart's values and the
release's name."""
from __future__ import annotations


from ..options import options
from ..spec import RunSpec
from .links import link_values


def chart_values(spec: RunSpec, module: str, run_id: str, *, source_image: str = "", server_image: str = "") -> dict:
    """The chart's values for one arm of ``spec``: every declared option that has a
    chart value path, at the spec's value (an empty text leaves the chart's default) (the arm's module and split, the run id),
    ``curve.enabled`` (false with ``--insecure``) and ``link`` (each source pod's rates,
    from ``--bandwidth`` or the ``--link`` profile: ``links.link_values``, which refuses
    what a cluster cannot enforce with a ValueError)."""
    arm = {**spec.values, **spec.workload_options(module), "run_id": run_id}
    values: dict = {}
    for option in options():
        if option.chart and option.dest in arm and arm[option.dest] != "":  # "": the chart's own default
            put(values, option.chart, arm[option.dest])
    # CURVE unless --insecure: the chart makes the release's keys (a Secret) and mounts them
    put(values, "curve.enabled", not spec.insecure)
    values["link"] = link_values(spec)
    images = {}
    for role, image in (("source", source_image), ("server", server_image)):
        if image:
            repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            images[role] = {"repository": repository, "tag": tag}
    if images:
        values["images"] = images
    return values


def put(values: dict, path: str, value) -> None:
    """``put(v, "workload.batchSize", 16)``: v["workload"]["batchSize"] = 16."""
    *parents, leaf = path.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[leaf] = value


def release_name(run_id: str, module: str) -> str:
    """A DNS-1123 release name, unique per run and arm."""
    return f"splittest-{run_id.rsplit('-', 1)[-1]}-{module}".lower()[:53]

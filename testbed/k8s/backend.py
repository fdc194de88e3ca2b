"""Each arm as a release of the chart: install, follow, collect, uninstall.

The release is removed (unless ``--keep``) whatever happens once its install was
attempted: a half-done install (one that timed out waiting, say), a failed pod, a
failed collection, Ctrl-C. When removing it fails too, both failures are reported in
one line, the first one first, with the command that removes the release by hand."""
from __future__ import annotations

import sys
from pathlib import Path

from ..backend import ArmResult, Backend
from ..errors import BackendError
from ..signals import signals_deferred
from ..spec import RunSpec
from .cluster import Cluster, ClusterError
from .collect import collect
from .follow import follow
from .values import chart_values, release_name

INSTALL_TIMEOUT_S = 300


class KubernetesBackend(Backend):
    """Each arm as a release of the chart: install, follow, collect, uninstall."""
    name = "k8s"

    def __init__(self, spec: RunSpec, cluster: Cluster, *, keep: bool = False, source_image: str = "",
                 server_image: str = "", wait_s: float = 3600.0, say=print, warn=None):
        self.spec, self.cluster, self.keep, self.say = spec, cluster, keep, say
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        self.images = {"source_image": source_image, "server_image": server_image}
        self.wait_s = wait_s

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        release = release_name(run_id, module)
        values = chart_values(self.spec, module, f"{run_id}/{module}", **self.images)
        self.say(f"arm {module}: helm install {release} in namespace {self.cluster.namespace}")
        try:
            self.cluster.install(release, values, timeout_s=INSTALL_TIMEOUT_S)
            follow(self.cluster, release, self.spec.sources, timeout_s=self.wait_s, say=self.say)
            found = collect(self.cluster, release, directory)
        except BaseException as failure:  # Ctrl-C (and SIGTERM, raised as it) included
            with signals_deferred():  # a second Ctrl-C waits for the uninstall
                self._remove(release, failure)
            raise
        with signals_deferred():
            self._remove(release)
        if found["sources"] != self.spec.sources:
            raise ClusterError(f"collected {found['sources']} source pods of {self.spec.sources}")
        return ArmResult(module, directory, "kubernetes", f"resources.limits.cpu {self.spec.cpu} per source pod")

    def _remove(self, release: str, failure: BaseException | None = None) -> None:
        """Uninstall ``release``; if that fails after ``failure``, report both."""
        by_hand = f"helm uninstall {release} --namespace {self.cluster.namespace}"
        if self.keep:
            self.say(f"  [{release}] kept (--keep); remove it with: {by_hand}")
            return
        try:
            self.cluster.uninstall(release)
        except Exception as exc:
            left = f"{exc}; the release is left installed, remove it with: {by_hand}"
            if failure is None:
                raise ClusterError(left) from None
            if isinstance(failure, BackendError):
                raise ClusterError(f"{failure}; then {left}") from failure
            # Ctrl-C or a bug: let the original propagate as it is, and say what was left behind.
            what = "interrupted" if isinstance(failure, KeyboardInterrupt) else f"{type(failure).__name__}: {failure}"
            self.warn(f"testbed: warning: {what}; then {left}")

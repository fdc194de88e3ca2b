"""Each arm as a release of the chart: install, follow, collect, uninstall.

The release is removed (unless ``--keep``) whatever happens once its install was
attempted: a half-done install (one that timed out waiting, say), a failed pod, a
failed collection, Ctrl-C. When removing it fails too, both failures are reported in
one line, the first one first, with the command that removes the release by hand.

No trace is lost on the way: every pod's log is streamed into the arm's folder while
the arm runs (``stream``), and whatever happens (a failed pod, a timeout, Ctrl-C), what
was streamed is written out as the arm's traces before the release is uninstalled."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..backend import ArmResult, Backend
from .. import errors
from ..errors import BackendError
from ..progress import open_progress
from ..signals import signals_deferred
from ..spec import RunSpec
from .cluster import Cluster, ClusterError
from .collect import collect, placement
from .follow import PENDING_TIMEOUT_S, follow
from .links import link_warnings
from .stream import LogStreamer, StreamFeed
from .values import chart_values, release_name

INSTALL_TIMEOUT_S = 300
_CLUSTERS: dict[tuple[str, str | None], Cluster] = {}  # the clusters this process reached, by namespace and context


class KubernetesBackend(Backend):
    """Each arm as a release of the chart: install, follow, collect, uninstall."""
    name = "k8s"

    def __init__(self, spec: RunSpec, cluster: Cluster, *, keep: bool = False, source_image: str = "",
                 server_image: str = "", wait_s: float = 3600.0, pending_timeout_s: float = PENDING_TIMEOUT_S,
                 say=print, warn=None):
        self.spec, self.cluster, self.keep, self.say = spec, cluster, keep, say
        self.warn = warn or errors.warn  # a warning's text; errors.warn writes the prefix
        self.images = {"source_image": source_image, "server_image": server_image}
        self.wait_s, self.pending_timeout_s = wait_s, pending_timeout_s
        self.placement: dict[str, dict] = {}  # by arm: where its pods ran (the manifest's cluster facts)
        self._link_warned = False

    def _warn_about_links(self) -> None:
        """Once, before the first install: what of the link the cluster runs without, or may."""
        if not self._link_warned:
            self._link_warned = True
            for warning in link_warnings(self.spec):
                self.warn(warning)

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        release = release_name(run_id, module)
        values = chart_values(self.spec, module, f"{run_id}/{module}", **self.images)
        self._warn_about_links()
        self.say(f"arm {module}: helm install {release} in namespace {self.cluster.namespace}")
        streamer = LogStreamer(self.cluster, directory / "_stream")
        # the live view, fed by the streamed pod logs; updated with each listing of the pods
        progress = open_progress(directory, module, self.spec, self.say,
                                 feed=StreamFeed(streamer.folder, lambda: streamer.pods))
        try:
            self.cluster.install(release, values, timeout_s=INSTALL_TIMEOUT_S)
            follow(self.cluster, release, self.spec.sources, timeout_s=self.wait_s,
                   pending_limit_s=self.pending_timeout_s, say=self.say,
                   on_pods=_then(streamer.update, progress and progress.update))
            problems = streamer.finish(self.cluster.pods(release))
            if progress is not None:
                progress.close()  # the last of the streamed logs, before collection removes them
            for problem in problems:
                self.warn(problem)
            found = collect(self.cluster, release, directory, streamed=streamer)
            shutil.rmtree(directory / "_stream", ignore_errors=True)  # all of it is in the traces and logs/ now
            self.placement[module] = placement(self.cluster, streamer.pods.values())
        except BaseException as failure:  # Ctrl-C (and SIGTERM, raised as it) included
            with signals_deferred():  # a second Ctrl-C waits for the salvage and the uninstall
                if progress is not None:
                    with contextlib.suppress(Exception):  # the display's end must not cost the uninstall
                        progress.close()
                self._salvage(release, directory, streamer, failure)
                self._remove(release, failure)
            raise
        with signals_deferred():
            self._remove(release)
        if found["sources"] != self.spec.sources:
            raise ClusterError(f"collected {found['sources']} source pods of {self.spec.sources}")
        return ArmResult(module, directory, "kubernetes", f"resources.limits.cpu {self.spec.cpu} per source pod")

    def _salvage(self, release: str, directory: Path, streamer: LogStreamer, failure: BaseException) -> None:
        """After a failure, before the uninstall: every log streamed so far (with a last
        read of each) written out as the arm's traces, so that they outlive the release."""
        if not streamer.logs:
            return
        try:
            streamer.finish(timeout_s=30.0)
            collect(self.cluster, release, directory, streamed=streamer)
            self.say(f"  [{release}] the traces so far are in {directory}")
        except BaseException as exc:  # the streamed logs stay in _stream/; the failure is what is reported
            self.warn(f"writing the traces of {release} after a failure: {exc}; "
                      f"the streamed pod logs are in {directory / '_stream'}")

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
            self.warn(f"{what}; then {left}")


def _then(first, second):
    """``first(pods)``, then ``second()`` when there is one."""
    def both(pods):
        first(pods)
        if second:
            second()
    return both


def open_backend(spec: RunSpec, say=print) -> KubernetesBackend:
    """The backend of ``testbed run --backend k8s``: the cluster of the kube context (its
    namespace), reachable, with the spec's images, waits and ``--keep``."""
    key = (spec.namespace, spec.kube_context or None)
    if key not in _CLUSTERS:  # once per process
        cluster = Cluster(namespace=key[0], context=key[1])
        say(f"cluster: Kubernetes {cluster.check_reachable()}, namespace {cluster.namespace}")
        _CLUSTERS[key] = cluster
    cluster = _CLUSTERS[key]
    return KubernetesBackend(spec, cluster, keep=spec.keep, source_image=spec.source_image,
                             server_image=spec.server_image, wait_s=spec.wait, pending_timeout_s=spec.pending_timeout,
                             say=say)

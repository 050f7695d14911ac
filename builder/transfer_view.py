"""A registry transfer (a base image pull, ``--push``) shown as one step of the build's
progress: the registry client reports to a :class:`registry.client.progress.Progress`; this one
forwards every blob's bytes to :meth:`builder.progress.Progress.transfer`. Its totals
(``summary()``) count as reused the blobs the destination already had, whole."""

from __future__ import annotations

from registry.client.progress import Progress as RegistryProgress

from .progress import BuildProgress

__all__ = ["TransferView", "transfer_totals"]


class TransferView(RegistryProgress):
    def __init__(self, progress: BuildProgress, step: int) -> None:
        super().__init__("quiet")
        self.build = progress
        self.step = step

    def _forward(self, key: str, status: str = "") -> None:
        task = self.tasks.get(key)
        if task is not None:
            self.build.transfer(self.step, key, task.label, task.done, task.total, status)

    def start(self, key: str, label: str, total: int) -> None:
        super().start(key, label, total)
        self._forward(key)

    def advance(self, key: str, n: int, *, reused: bool = False) -> None:
        super().advance(key, n, reused=reused)
        self._forward(key)

    def finish(self, key: str, status: str = "done", message: str | None = None) -> None:
        super().finish(key, status, message)
        self._forward(key, status)

    def message(self, text: str) -> None:
        """A line of the transfer (a registry that does not answer) in the step's log."""
        self.build.log(self.step, text)


def transfer_totals(ref: str, summary: dict[str, int]) -> str:
    """``REF: 1.2 MiB transferred, 3.4 MiB reused`` (reused: blobs the destination had)."""
    from cas.units import human_bytes

    return (f"{ref}: {human_bytes(summary['transferred'])} transferred, "
            f"{human_bytes(summary['reused'])} reused")

"""What every build-cache backend stores and answers with: :class:`CachedLayer`, the
step key (:func:`step_key`) and the one-sentence reason for a miss (:func:`miss_reason`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CLAMP", "EARLIER_RELEASE_MISS", "FACTS", "IMPORTED_MISS", "STEP_SEMANTICS", "CachedLayer",
           "clamp_key", "facts_key", "miss_reason", "step_key"]


# What pybuild makes of a step's inputs, as a number in every step key. Raised by a
# release that changes a step's layer or facts for the same inputs (a fix to what COPY
# keeps, to how RUN's changes become a layer): steps cached by earlier releases, locally
# or in a registry cache, are then run again instead of reused with the old behaviour.
# Each raise costs every cache one rebuild; a release that changes no output keeps it.
# 1: keys without the number, made by releases before BuildKit's directory mtimes and
# hard links per source in COPY, expanded ONBUILD triggers, RUN's /etc/hosts and
# resolv.conf, an ARG over an ENV of its name, and ADD --chown of archives.
# 2: before COPY --from kept the owners of the stage's (or image's) files.
# 3: before names were looked up through a linked /etc/passwd or /etc/group (COPY
# --chown, WORKDIR under USER), a RUN's missing workdir was made as its user's and COPY
# --from kept the xattrs (setcap's security.capability) of the stage's files.
STEP_SEMANTICS = 4


def step_key(parent: str, instruction: str, inputs: dict[str, Any]) -> str:
    """The cache key of a step (hex sha256)."""
    doc = json.dumps([parent, instruction, inputs], sort_keys=True, separators=(",", ":"))
    doc = f"{STEP_SEMANTICS}:{doc}"
    return hashlib.sha256(doc.encode()).hexdigest()


# The instruction of a facts entry; its parent is FACTS + ":" + the step's parent key.
FACTS = "facts"


def facts_key(parent: str, what: dict[str, Any]) -> tuple[str, str]:
    """The key and the parent of the facts entry of a step on ``parent`` (``what``: the
    step's instruction and whatever else the facts depend on)."""
    return step_key(parent, FACTS, what), f"{FACTS}:{parent}"


# The instruction of a clamp entry: a step's layer (cached with its files' own times)
# with its times clamped to an epoch; its parent is CLAMP + ":" + that layer's digest.
CLAMP = "clamp"


def clamp_key(layer: str, epoch: int) -> tuple[str, str]:
    """The key and the parent of the entry of ``layer`` (a digest) clamped to ``epoch``."""
    return step_key(f"{CLAMP}:{layer}", CLAMP, {"sde": epoch}), f"{CLAMP}:{layer}"


@dataclass(frozen=True, slots=True)
class CachedLayer:
    """What a step produced: the layer blob's descriptor fields and its diff_id, and
    ``created``, when the step ran (the history time a cache hit reuses, so that a
    rebuild from the cache gives the same image; "" in entries written before).

    A step that changed nothing has ``digest`` "" (and size 0, no diff_id, no media
    type): it is cached all the same, and adds an empty history entry.

    ``facts`` (no layer): what a step read from the layers below it before its key could
    be made (COPY's resolved destination, ``--chown`` ids), recorded under a key of its
    own (:func:`facts_key`) so that a build whose lower layers are still in a remote
    cache computes the key without fetching them.

    ``epoch``: the layer has its file times clamped to that SOURCE_DATE_EPOCH (an inline
    cache's entry, whose layer is the image's own); None: the files' own times, as every
    step records it (the image gets it clamped, builder.steps.clamp)."""

    digest: str
    size: int
    diff_id: str
    media_type: str
    created: str = ""
    facts: dict[str, Any] | None = field(default=None, compare=False)
    epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"digest": self.digest, "size": self.size,
                               "diff_id": self.diff_id, "media_type": self.media_type}
        if self.created:
            doc["created"] = self.created
        if self.facts is not None:
            doc["facts"] = self.facts
        if self.epoch is not None:
            doc["epoch"] = self.epoch
        return doc

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CachedLayer:
        facts, epoch = d.get("facts"), d.get("epoch")
        if facts is not None and not isinstance(facts, dict):
            raise ValueError("a cache entry's facts must be an object")
        if epoch is not None and (type(epoch) is not int or epoch < 0):
            raise ValueError("a cache entry's epoch must be a whole number of seconds")
        return cls(str(d["digest"]), int(d["size"]), str(d["diff_id"]), str(d["media_type"]),
                   str(d.get("created", "")), facts, epoch)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CachedLayer:
        return cls.from_dict(json.loads(text))


IMPORTED_MISS = ("an imported cache ran this instruction on this parent: its inputs "
                 "differ, or its layer is not stored here")
EARLIER_RELEASE_MISS = ("an earlier pybuild release cached it, and this release makes such "
                        "steps differently: it runs once again, later builds reuse it")


def miss_reason(previous_inputs: dict[str, Any] | None, same_parent: bool,
                inputs: dict[str, Any], *, imported: bool = False,
                previous_key: str | None = None, parent: str = "",
                instruction: str = "") -> str:
    """Why a step missed, in one sentence: ``previous_inputs`` are those of the latest
    recorded entry for the same parent and instruction (None: there is none),
    ``same_parent`` whether any entry has that parent, ``imported`` whether an imported
    entry (whose inputs are not known) has the same parent and instruction.
    ``previous_key``, that entry's key: when it is not the key its ``parent``,
    ``instruction`` and inputs give now, an earlier release (another
    :data:`STEP_SEMANTICS`) recorded it."""
    if previous_inputs is None:
        if imported:
            return IMPORTED_MISS
        if same_parent:
            return "the instruction changed (no earlier build ran it on this parent)"
        return "the previous step changed (or this step never ran before)"
    changed = _diff(previous_inputs, inputs)
    if changed:
        return "inputs changed: " + ", ".join(changed)
    if previous_key is not None and previous_key != step_key(parent, instruction, previous_inputs):
        return EARLIER_RELEASE_MISS
    return "its cached layer is no longer stored"


def _assignments(value: Any) -> bool:
    """``value`` is a list of ``NAME=value`` strings (an environment)."""
    return isinstance(value, list) and all(isinstance(e, str) and "=" in e for e in value)


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        name = f"{prefix}{k}"
        if k not in old:
            out.append(f"{name} (new)")
        elif k not in new:
            out.append(f"{name} (gone)")
        elif isinstance(old[k], dict) and isinstance(new[k], dict):
            out.extend(_diff(old[k], new[k], name + ":"))
        elif old[k] != new[k] and _assignments(old[k]) and _assignments(new[k]):
            # a RUN's environment: the names whose values changed (or only the order)
            out.extend(_diff(dict(e.partition("=")[::2] for e in old[k]),
                             dict(e.partition("=")[::2] for e in new[k]), name + ":") or [name])
        elif old[k] != new[k]:
            out.append(name)
    return out

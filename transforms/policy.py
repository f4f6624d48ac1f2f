"""The ImageMagick safety policy, set by the tool itself in every process that decodes images.

Layers, each enough on its own against a different threat:

1. Images are only ever decoded from bytes with the coder forced from their sniffed magic bytes
   (`transforms.decode`): no file name or blob name ever reaches ImageMagick, so `msl:`, `text:`,
   `@file`, URLs and PS/PDF/SVG/MVG can never be selected, whatever the name or content says.
2. Resource limits (width, height, area, memory, map, disk, threads) through Wand, plus
   our own check of the size in the file header so a decompression bomb is refused before a single
   pixel is decoded, with a message saying why.
3. Defence in depth: a restrictive `policy.xml` (only the six image coders, and TIFF64 for reading
   BigTIFF; no delegates, no filters, no `@file` paths, the same resource limits) that ImageMagick
   loads because `MAGICK_CONFIGURE_PATH` points at it while wand first starts ImageMagick in the
   process (the variable is restored afterwards, so child processes such as `convert` are not bound
   by it). Verified with 6.9.11:
   the file is listed by `convert -list policy` and `IsRightsAuthorized` refuses SVG/MSL/TEXT/MVG.
   `apply_policy()` checks this at run time and reports it in `PolicyStatus.policy_file_active`;
   if wand was imported first the file cannot take effect and layers 1 and 2 remain.

Frames: only the first frame of a GIF/TIFF is decoded (the reader stops there), so a file with
millions of frames costs one. The "list-length" resource is deliberately not set: with it, ImageMagick
6.9.11 crashes (SIGSEGV) writing a multi-frame GIF longer than the limit, which would kill a worker.

Time: ImageMagick 6's own `time` resource counts from the *process* start and, when exceeded, calls
exit() (`fatal/cache.c/GetImagePixelCache`), which would kill a long-lived pool worker after its
first minute. It is therefore not used; the per-image time limit is a progress-monitor deadline set
by `transforms.decode` instead, which aborts the running operation cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transforms.imagetypes import CODERS, READ_ONLY_CODERS

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB

MAX_WIDTH = 16384  # pixels
MAX_HEIGHT = 16384  # pixels
MAX_AREA = 128_000_000  # pixels per image (128 MP)
MAX_MEMORY = 256 * MiB  # pixel cache in RAM, per process; beyond it the cache goes to map, then disk
MAX_MAP = 512 * MiB
MAX_DISK = 1 * GiB  # beyond it an image fails
MAX_SECONDS = 60.0  # per image, decode + operations + encode
THREADS = 1  # ImageMagick threads per process: parallelism comes from worker processes

_SENTINEL = "corpus-transforms-policy"

# Coders that must never be reachable; checked after loading to prove the policy file took effect.
FORBIDDEN_CODERS = (
    "SVG",
    "MVG",
    "MSL",
    "TEXT",
    "TXT",
    "LABEL",
    "CAPTION",
    "PS",
    "EPS",
    "PDF",
    "URL",
    "HTTPS",
    "EPHEMERAL",
    "INLINE",
)


@dataclass(frozen=True)
class Limits:
    width: int = MAX_WIDTH
    height: int = MAX_HEIGHT
    area: int = MAX_AREA
    memory: int = MAX_MEMORY
    map: int = MAX_MAP
    disk: int = MAX_DISK
    seconds: float = MAX_SECONDS
    threads: int = THREADS


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class PolicyStatus:
    limits: Limits
    policy_file: str | None  # the policy.xml written for ImageMagick
    policy_file_active: bool  # ImageMagick loaded it and refuses the forbidden coders
    detail: str  # why not, when not
    imagemagick_version: str


_lock = threading.Lock()
_status: PolicyStatus | None = None


def policy_xml(limits: Limits = DEFAULT_LIMITS) -> str:
    """The policy.xml for `limits`. Resource values in a policy are maxima: later API calls can only
    lower them."""
    coders = ",".join(CODERS.values())
    read_only = ",".join(c for variants in READ_ONLY_CODERS.values() for c in variants)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by corpus-manager's transforms.policy; loaded through MAGICK_CONFIGURE_PATH. -->
<policymap>
  <policy domain="system" name="{_SENTINEL}" value="1"/>
  <policy domain="resource" name="width" value="{limits.width}"/>
  <policy domain="resource" name="height" value="{limits.height}"/>
  <policy domain="resource" name="area" value="{limits.area}"/>
  <policy domain="resource" name="memory" value="{limits.memory}"/>
  <policy domain="resource" name="map" value="{limits.map}"/>
  <policy domain="resource" name="disk" value="{limits.disk}"/>
  <policy domain="resource" name="thread" value="{limits.threads}"/>
  <policy domain="delegate" rights="none" pattern="*"/>
  <policy domain="filter" rights="none" pattern="*"/>
  <policy domain="path" rights="none" pattern="@*"/>
  <policy domain="coder" rights="none" pattern="*"/>
  <policy domain="coder" rights="read|write" pattern="{{{coders}}}"/>
  <policy domain="coder" rights="read" pattern="{{{read_only}}}"/>
</policymap>
"""


def _private_dir(name: str) -> Path:
    """A directory only this user can write, for the policy file.

    Reused across processes (one per content) so workers do not leak temp dirs; ownership and mode
    are checked because a policy file someone else could replace would defeat its purpose.
    """
    base = Path(tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = base / f"{name}-{uid}" if uid is not None else base / name
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode) and (uid is None or (st.st_uid == uid and st.st_mode & 0o077 == 0)):
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=name + "-"))


def write_policy_file(limits: Limits = DEFAULT_LIMITS) -> Path:
    """Write `policy_xml(limits)` to a private directory; returns the directory."""
    text = policy_xml(limits)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    directory = _private_dir(f"corpus-transforms-policy-{digest}")
    target = directory / "policy.xml"
    if not (target.exists() and target.read_text(encoding="utf-8") == text):
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)  # atomic: a concurrently starting worker never reads half a file
    return directory


def apply_policy(limits: Limits | None = None) -> PolicyStatus:
    """Install the policy in this process. Call it before anything imports wand (`init_worker` does).

    Idempotent; a later call can lower the resource limits but not raise them above the first call's
    (the loaded policy file caps them).
    """
    global _status
    limits = limits or (_status.limits if _status else DEFAULT_LIMITS)
    with _lock:
        if _status is not None and _status.limits == limits:
            return _status
        policy_dir: Path | None = None
        env: dict[str, str] = {}
        wand_loaded = "wand.api" in sys.modules
        if _status is None and not wand_loaded:
            policy_dir = write_policy_file(limits)
            previous = os.environ.get("MAGICK_CONFIGURE_PATH")
            env["MAGICK_CONFIGURE_PATH"] = str(policy_dir) + (os.pathsep + previous if previous else "")
            # Read when ImageMagick and OpenMP start; the thread limit is also set through the API below.
            env["MAGICK_THREAD_LIMIT"] = env["OMP_NUM_THREADS"] = str(limits.threads)

        # Only while ImageMagick starts: left in os.environ, the restrictive policy would also bind every
        # `convert` this process runs later (test fixtures, benchmarks), which need other coders.
        with _environment(env):
            import wand.resource
            import wand.version

            wand.resource.genesis()  # loads the policy cache now, while MAGICK_CONFIGURE_PATH is set
            verified = _verify_policy_file() if _status is None else (False, "")

        _set_limits(limits)
        if _status is not None:
            active, detail, policy_file = _status.policy_file_active, _status.detail, _status.policy_file
        else:
            policy_file = str(policy_dir / "policy.xml") if policy_dir else None
            active, detail = verified
            if wand_loaded and not active:
                detail = "wand was imported before apply_policy(), too late for MAGICK_CONFIGURE_PATH"
            if not active:
                log.warning(
                    "ImageMagick policy file not in effect (%s); relying on forced-format decoding and resource limits",
                    detail,
                )
        _status = PolicyStatus(limits, policy_file, active, detail, str(wand.version.MAGICK_VERSION))
        return _status


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _set_limits(limits: Limits) -> None:
    from wand.resource import limits as im_limits

    im_limits["width"] = limits.width
    im_limits["height"] = limits.height
    im_limits["area"] = limits.area
    im_limits["memory"] = limits.memory
    im_limits["map"] = limits.map
    im_limits["disk"] = limits.disk
    im_limits["thread"] = limits.threads


def _verify_policy_file() -> tuple[bool, str]:
    """Whether ImageMagick loaded our policy.xml and refuses the dangerous coders."""
    try:
        from transforms import capi
    except AttributeError as e:  # pragma: no cover - a build without the policy functions
        return False, f"cannot query the ImageMagick policy: {e}"
    if capi.policy_value(_SENTINEL) is None:
        return False, "ImageMagick did not load the policy file"
    allowed = [c for c in FORBIDDEN_CODERS if capi.read_authorized(c)]
    if allowed:
        return False, f"another policy file re-allows the coders {', '.join(allowed)}"
    needed = [*CODERS.values(), *(c for variants in READ_ONLY_CODERS.values() for c in variants)]
    refused = [c for c in needed if not capi.read_authorized(c)]
    if refused:
        return False, f"another policy file refuses the image coders {', '.join(refused)}"
    return True, ""


def policy_status() -> PolicyStatus | None:
    """The status of `apply_policy()` in this process, None before it ran."""
    return _status


def current_limits() -> Limits:
    return _status.limits if _status else DEFAULT_LIMITS


def imagemagick_version() -> str:
    """The ImageMagick version wand is bound to (for the ImageTransform row). Applies the policy first,
    since it loads ImageMagick into this process."""
    return apply_policy().imagemagick_version

"""What a process pool runs: `init_worker` once per process, `apply_spec` once per image.

    pool = create_pool(workers)              # spawn context, init_worker as initializer
    future = pool.submit(apply_spec, spec.canonical_json(), data, blob_name)
    result = future.result()                 # TransformResult, or raises ImageError / SpecError

Wand is not thread-safe and ImageMagick's own threads are limited to one, so parallelism comes from
processes only. Everything passed in and out is plain data (str, bytes, a dataclass) so it pickles.
"""

from __future__ import annotations

import multiprocessing
import os
import posixpath
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from transforms.errors import ImageError
from transforms.imagetypes import CONTENT_TYPES, EXTENSIONS, KNOWN_EXTENSIONS
from transforms.policy import Limits, apply_policy, current_limits, policy_status
from transforms.pool import WorkerPool
from transforms.registry import OpContext, get_operation
from transforms.spec import Spec


@dataclass(frozen=True)
class TransformResult:
    data: bytes
    format: str  # kind written: 'jpeg', 'png', ...
    extension: str  # canonical extension of that kind ('.jpg', '.png', ...); see output_name for names
    content_type: str
    width: int
    height: int
    source_format: str  # kind of the input, from its bytes


def init_worker(limits: Limits | None = None) -> None:
    """Process-pool initializer: the safety policy, and one ImageMagick thread (`Limits.threads`), in
    place before wand loads ImageMagick into this process."""
    apply_policy(limits)


def create_pool(workers: int | None = None, limits: Limits | None = None) -> WorkerPool:
    """A process pool ready for `apply_spec`: a `WorkerPool` (transforms.pool), whose workers ignore Ctrl-C
    and SIGTERM (the parent decides) and which `terminate_workers()` stops at once.

    'spawn' so that workers start without the parent's ImageMagick state: a forked child would inherit
    an already-initialised ImageMagick (no policy file) and possibly OpenMP threads that do not survive
    fork.
    """
    return WorkerPool(
        workers or os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(limits,),
    )


@lru_cache(maxsize=32)
def _parse(canonical_spec_json: str) -> Spec:
    return Spec.from_canonical_json(canonical_spec_json)


def apply_spec(canonical_spec_json: str, data: bytes, blob_name: str) -> TransformResult:
    """Decode `data`, apply the spec, encode. Deterministic: the same bytes, spec and blob name give the
    same output. `blob_name` only seeds random operations; it never reaches ImageMagick.

    Raises ImageError (this image failed) or SpecError (the spec JSON is bad).
    """
    return transform(_parse(canonical_spec_json), data, blob_name)


def transform(spec: Spec, data: bytes, blob_name: str) -> TransformResult:
    """`apply_spec` for an already parsed spec (in-process use, tests)."""
    if policy_status() is None:
        init_worker()  # a caller forgot the initializer: still never decode without the policy
    limits = current_limits()
    # Imported here, not at the top: wand may load only once the policy is in place.
    from wand.exceptions import WandException

    from transforms import decode

    # ImageMagick's warnings on an image it did decode (a JPEG with a corrupt segment, an unknown TIFF tag)
    # are not kept: the run's outcome per image is an output or an ImageError. Silenced so that Wand does
    # not print them from a worker.
    with warnings.catch_warnings(), decode.time_limit(limits.seconds):
        warnings.simplefilter("ignore")
        image, kind = decode.open_image(data, limits)
        with image:
            ctx = OpContext(
                spec_digest=spec.digest,
                blob_name=blob_name,
                max_width=limits.width,
                max_height=limits.height,
                max_area=limits.area,
            )
            for index, op in enumerate(spec.ops):
                ctx.index = index
                operation = get_operation(op.name)
                try:
                    operation.function(image, operation.parse_arg(op.arg), ctx)
                except ImageError:
                    raise
                except (WandException, MemoryError) as e:
                    decode.check_time(limits)
                    raise ImageError(f"{op}: {decode.clean_message(e)}") from None
                decode.check_time(limits)
            out_kind = ctx.output_format or kind
            try:
                blob = decode.encode_image(image, out_kind, ctx.quality)
            except (WandException, MemoryError) as e:
                decode.check_time(limits)
                raise ImageError(f"could not encode {out_kind.upper()}: {decode.clean_message(e)}") from None
            decode.check_time(limits)
            width, height = image.width, image.height
    return TransformResult(
        data=blob,
        format=out_kind,
        extension=EXTENSIONS[out_kind],
        content_type=CONTENT_TYPES[out_kind],
        width=width,
        height=height,
        source_format=kind,
    )


def output_name(file_name: str, spec: Spec) -> str:
    """The output file name: the extension follows a `format` op that changes the type (`a.jpg` ->
    `a.png`); otherwise, or when the name already has an extension of that type (`a.JPEG` with
    format=jpeg), the name is kept. Only the last path component is looked at."""
    kind = spec.output_format
    if kind is None:
        return file_name
    head, base = posixpath.split(file_name)
    stem, ext = posixpath.splitext(base)
    if ext.lower() in KNOWN_EXTENSIONS[kind]:
        return file_name
    return posixpath.join(head, stem + EXTENSIONS[kind]) if head else stem + EXTENSIONS[kind]


def colliding_outputs(file_names: Iterable[str], spec: Spec) -> dict[str, list[str]]:
    """Output names that more than one input would write (`a.jpg` and `a.png` with format=png), each
    with its inputs: a set with any of these must fail rather than let one image overwrite another."""
    by_output: dict[str, list[str]] = {}
    for name in file_names:
        by_output.setdefault(output_name(name, spec), []).append(name)
    return {out: sorted(ins) for out, ins in by_output.items() if len(ins) > 1}


__all__ = [
    "ImageError",
    "TransformResult",
    "WorkerPool",
    "apply_spec",
    "colliding_outputs",
    "create_pool",
    "init_worker",
    "output_name",
    "transform",
]

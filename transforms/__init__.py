"""Image transform operations for corpus-manager, run through ImageMagick (Wand).

Importing this package does not load ImageMagick: specs can be parsed and validated in any process.
Wand is loaded by `apply_policy()` / `init_worker()` / `apply_spec()`, after the safety policy is set.

    spec = Spec.from_ops(["resize=256x256", "charcoal=2"])     # SpecError on a bad op or argument
    spec.canonical_json(), spec.digest, spec.command_line()   # for the ImageTransform row
    with create_pool(workers) as pool:
        result = pool.submit(apply_spec, spec.canonical_json(), data, blob_name).result()
    output_name("a.jpg", spec)                                 # "a.png" when spec has format=png
"""

from transforms.errors import ImageError, SpecError
from transforms.imagetypes import CONTENT_TYPES, EXTENSIONS, KINDS, sniff
from transforms.policy import (
    DEFAULT_LIMITS,
    Limits,
    PolicyStatus,
    apply_policy,
    imagemagick_version,
    policy_status,
)
from transforms.registry import OpContext, Operation, operation, operations
from transforms.spec import Op, Spec, parse_op, spec_from_args
from transforms.worker import (
    TransformResult,
    WorkerPool,
    apply_spec,
    colliding_outputs,
    create_pool,
    init_worker,
    output_name,
    transform,
)

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_LIMITS",
    "EXTENSIONS",
    "KINDS",
    "ImageError",
    "Limits",
    "Op",
    "OpContext",
    "Operation",
    "PolicyStatus",
    "Spec",
    "SpecError",
    "TransformResult",
    "WorkerPool",
    "apply_policy",
    "apply_spec",
    "colliding_outputs",
    "create_pool",
    "imagemagick_version",
    "init_worker",
    "operation",
    "operations",
    "output_name",
    "parse_op",
    "policy_status",
    "sniff",
    "spec_from_args",
    "transform",
]

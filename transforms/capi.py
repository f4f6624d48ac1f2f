"""The ImageMagick C functions this package calls that Wand does not bind: declared here and only here.

Wand's public API covers reading, operations and writing; two things this package needs are not in it:

- the policy queries ``GetPolicyValue`` and ``IsRightsAuthorized`` (MagickCore): without them
  ``transforms.policy.apply_policy`` could not prove that ImageMagick loaded our policy.xml and refuses
  SVG/MSL/TEXT, only hope so;
- ``MagickSetProgressMonitor`` (MagickWand): the per-image time limit must also watch the decode, and
  Wand binds only ``MagickSetImageProgressMonitor``, which needs an image already read.

``_foreign`` is the one function that binds them. It gives each its own ctypes prototype on Wand's
public library handles (``wand.api.library`` and ``wand.api.libmagick``, in ``wand.api.__all__``), so
the function objects Wand shares are never changed (no ``argtypes`` written on them). These C
signatures have been stable since ImageMagick 6.2; what could move is how Wand exposes its library
handles, hence wand's upper bound in pyproject.toml and the guard test
``tests/test_transforms.py::test_c_functions_wand_does_not_bind_still_work``, which fails if an
upgrade breaks any of them.

Import only once the policy is in place (importing ``wand.api`` loads ImageMagick).
"""

from __future__ import annotations

import ctypes
from typing import Any

from wand.api import libmagick, library
from wand.cdefs.magick_image import MagickProgressMonitor

# PolicyDomain / PolicyRights values (the same in ImageMagick 6 and 7).
_CODER_DOMAIN = 1
_READ_RIGHTS = 1


def _foreign(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    """``lib``'s C function ``name`` through a prototype of our own: Wand's copy stays as Wand declared it."""
    return ctypes.CFUNCTYPE(restype, *argtypes)((name, lib))


_get_policy_value = _foreign(libmagick, "GetPolicyValue", ctypes.c_void_p, ctypes.c_char_p)
_is_rights_authorized = _foreign(
    libmagick, "IsRightsAuthorized", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p
)
_relinquish_memory = _foreign(libmagick, "RelinquishMagickMemory", ctypes.c_void_p, ctypes.c_void_p)
_set_progress_monitor = _foreign(
    library, "MagickSetProgressMonitor", ctypes.c_void_p, ctypes.c_void_p, MagickProgressMonitor, ctypes.c_void_p
)


def policy_value(name: str) -> str | None:
    """The value of the system policy ``name`` ImageMagick loaded, None when no policy file sets it."""
    value = _get_policy_value(name.encode())
    if not value:
        return None
    try:
        return ctypes.string_at(value).decode("utf-8", "replace")
    finally:
        _relinquish_memory(value)  # GetPolicyValue returns a copy the caller owns


def read_authorized(coder: str) -> bool:
    """Whether the loaded policy lets ImageMagick read with ``coder`` (``"PNG"``, ``"SVG"``, ...)."""
    return bool(_is_rights_authorized(_CODER_DOMAIN, _READ_RIGHTS, coder.encode()))


def set_progress_monitor(wand: Any, monitor: Any) -> None:
    """Call ``monitor`` (a ``MagickProgressMonitor``, kept referenced by the caller) while ImageMagick
    works on ``wand`` (an ``Image.wand``), decoding included; returning False from it aborts the work."""
    _set_progress_monitor(wand, monitor, None)

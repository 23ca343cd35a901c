# No ``from __future__`` import in this module, on purpose: see _compile (a compile() called through a function
# of a module with future imports would inherit them).
"""One AST conversion at a time in the process: a guard against a CPython bug that crashed whole runs.

CPython keeps the recursion counter of its AST converters (C AST -> ``ast`` objects in ``ast.parse``, and back in
``compile(tree)``) in interpreter-wide state, not per thread (gh-106905; 3.11 and 3.12 before their fixes). Two
threads converting at once corrupt it, and the next conversion raises ``SystemError: AST constructor recursion depth
mismatch``. It is not rare in this plugin: Python 3.11's traceback module parses source to draw its ``^^^^`` carets,
so a failed model call formatted in a prefetch thread (litellm formats tracebacks of failures) while the main thread
renders a test report (pytest parses the source of each traceback entry) was enough: INTERNALERROR, exit status 3,
no summary, exactly when the provider was down.

:func:`install` makes the race impossible rather than less likely: ``builtins.compile`` -- the one Python-level
door to both converters, ``ast.parse`` included (it calls ``compile(..., PyCF_ONLY_AST)``) -- is wrapped so that a
call that builds or reads an AST holds a process-wide lock. Calls that only compile source to code (the common
case) pass straight through. Installed once per process, on every Python version (the cost is one flag test per
compile), by the plugin at import and by the model-call pool before its first thread starts.
"""

import __future__

import ast
import builtins
import os
import sys
import threading

# The compiler flags a code object passes on to compile() calls made from it (PyCF_MASK: the future features).
_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag

_lock = threading.RLock()  # re-entrant: a finalizer run by a collection during a conversion may parse too
_original = builtins.compile


def _compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, *, _feature_version=-1):
    """``compile`` with the AST conversions serialized; otherwise exactly the built-in."""
    if not dont_inherit:
        # The built-in inherits the future flags of the frame that calls it, which is now this one: hand it the
        # caller's instead, as it would have taken them.
        flags |= sys._getframe(1).f_code.co_flags & _FUTURE_FLAGS
        dont_inherit = True
    if flags & ast.PyCF_ONLY_AST or isinstance(source, ast.AST):
        with _lock:
            return _original(source, filename, mode, flags, dont_inherit, optimize,
                             _feature_version=_feature_version)
    return _original(source, filename, mode, flags, dont_inherit, optimize, _feature_version=_feature_version)



def _new_lock_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy held forever.
    global _lock
    _lock = threading.RLock()


def installed() -> bool:
    return builtins.compile is _compile


def install() -> None:
    """Serialize AST conversions in this process (idempotent; wraps whatever ``compile`` is at the first call)."""
    global _original
    if builtins.compile is not _compile:
        _original = builtins.compile
        builtins.compile = _compile


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)

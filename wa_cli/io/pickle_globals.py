"""Which globals a pickle may name: admitted always, admitted on request, or never.

torch's ``weights_only`` unpickler calls an allowed class with the pickle's own arguments (and
sets its state), so admitting a class admits whatever its constructor does:
``--allow-global subprocess.Popen`` would let a file run a command, ``io.FileIO`` or
``logging.FileHandler`` would let it create files. wa therefore sorts every global into:

* **admitted in every pickle** (:data:`ADMITTED`): classes and reconstruction functions known to
  build plain data (``argparse.Namespace``; numpy arrays, scalars, dtypes and RNG states, which
  Composer and many training loops save beside the weights);
* **known data-only, admitted when named** (:data:`KNOWN_DATA`): OmegaConf containers (Hydra
  configs in Lightning checkpoints) and the builtin types they reference. A refusal suggests
  ``--allow-global`` for these only;
* **never admitted** (:func:`never_admitted`): every function not listed above, and every global
  from a module that can run code or touch the system (``subprocess``, ``os``, ``builtins`` other
  than its data types, ``io``, ``pathlib``, ...), including classes deriving from one;
* anything else is an unknown class: refused, and not suggested; a user who wrote the class and
  knows it only stores data may still name it (docs/inputs.md: the risk).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable

# Modules whose classes or functions can run code, load code, or touch files, processes, the
# network or the interpreter. Matched on the first dotted component (``os`` covers ``os.path``).
REFUSED_MODULES: frozenset[str] = frozenset(
    {
        "_codecs", "_io", "_pickle", "_posixsubprocess", "_thread", "asyncio", "bdb", "builtins",
        "cProfile", "cmd", "code", "codecs", "codeop", "concurrent", "copyreg", "ctypes",
        "dbm", "distutils", "ensurepip", "fileinput", "ftplib", "functools", "gc", "glob",
        "http", "imaplib", "imp", "importlib", "inspect", "io", "logging", "marshal", "mmap",
        "multiprocessing", "nt", "operator", "os", "pathlib", "pdb", "pickle", "pip", "pkgutil",
        "platform", "poplib", "posix", "profile", "pty", "pydoc", "runpy", "sched", "select",
        "selectors", "setuptools", "shelve", "shutil", "signal", "site", "smtplib", "socket",
        "socketserver", "sqlite3", "ssl", "subprocess", "sys", "sysconfig", "tarfile",
        "telnetlib", "tempfile", "threading", "timeit", "trace", "types", "urllib", "venv",
        "webbrowser", "xmlrpc", "zipfile", "zipimport",
    }
)  # fmt: skip

# Parts of otherwise data-only packages that open files, load code or start processes.
REFUSED_PREFIXES: tuple[str, ...] = (
    "numpy.ctypeslib", "numpy.distutils", "numpy.f2py", "numpy.lib.format", "numpy.lib._datasource",
    "numpy.memmap", "numpy.testing", "numpy._core.memmap", "numpy.core.memmap",
    "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension", "torch._dynamo",
    "torch.distributed", "torch.multiprocessing", "torch.ops", "torch.library",
)  # fmt: skip

_NUMPY_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")

# name -> why it is safe. Functions here only rebuild numpy data from the pickle's arguments.
ADMITTED: dict[str, str] = {
    "argparse.Namespace": "fills an empty namespace (timm's and fairseq's args)",
    "datetime.timedelta": "a duration from three numbers (Composer's timestamp wall-clock times)",
    "numpy.ndarray": "an array",
    "numpy.dtype": "an array's element type",
    **{f"{m}._reconstruct": "rebuilds an ndarray" for m in _NUMPY_CORE},
    **{f"{m}.scalar": "rebuilds a numpy scalar" for m in _NUMPY_CORE},
    "numpy.random._pickle.__randomstate_ctor": "rebuilds a RandomState",
    "numpy.random._pickle.__bit_generator_ctor": "rebuilds a bit generator by name",
    "numpy.random._pickle.__generator_ctor": "rebuilds a Generator",
    "numpy.random.mtrand.RandomState": "an RNG state",
    "numpy.random._generator.Generator": "an RNG state",
    "numpy.random._mt19937.MT19937": "an RNG state",
    "numpy.random._pcg64.PCG64": "an RNG state",
    "numpy.random._pcg64.PCG64DXSM": "an RNG state",
    "numpy.random._philox.Philox": "an RNG state",
    "numpy.random._sfc64.SFC64": "an RNG state",
    "numpy.random.bit_generator.SeedSequence": "an RNG seed",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": "rebuilds an RNG seed (Cython)",
}

_DATA_BUILTINS = (
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
    "object", "set", "slice", "str", "tuple",
)  # fmt: skip

KNOWN_DATA: dict[str, str] = {
    **{f"builtins.{n}": "a builtin data type" for n in _DATA_BUILTINS},
    "collections.OrderedDict": "a dict",
    "collections.defaultdict": "a dict (its factory must itself be admitted)",
    "typing.Any": "a type annotation marker",
    "omegaconf.dictconfig.DictConfig": "a Hydra/OmegaConf config (values are never resolved)",
    "omegaconf.listconfig.ListConfig": "a Hydra/OmegaConf config list",
    "omegaconf.base.Metadata": "OmegaConf node metadata",
    "omegaconf.base.ContainerMetadata": "OmegaConf container metadata",
    **{
        f"omegaconf.nodes.{n}": "an OmegaConf value node"
        for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode")
    },
}


def qualified_name(obj: object) -> str:
    """``module.qualname`` as torch's unpickler names a global."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def never_admitted(name: str, obj: object | None = None) -> str | None:
    """Why wa never admits the global ``name`` (``obj`` when imported), or None when it may.

    Example:
        >>> never_admitted("subprocess.Popen")
        "module 'subprocess' can run code or touch the system"
        >>> never_admitted("argparse.Namespace") is None
        True
    """
    if name in ADMITTED or name in KNOWN_DATA:
        return None
    top = name.split(".", 1)[0]
    if top in REFUSED_MODULES:
        return f"module '{top}' can run code or touch the system"
    hit = next((p for p in REFUSED_PREFIXES if name == p or name.startswith(p + ".")), None)
    if hit is not None:
        return f"'{hit}' can open files or load code"
    if obj is None:
        return None
    if not isinstance(obj, type):
        return (
            f"it is a {type(obj).__name__}, not a class: a pickle could call it with any arguments"
        )
    for base in obj.__mro__[1:]:
        base_name = qualified_name(base)
        reason = None if base is object else never_admitted(base_name, base)
        if reason is not None:
            return f"it derives from '{base_name}' ({reason})"
    return None


def import_global(name: str) -> object:
    """The object ``MODULE.NAME`` names (attributes may be nested: ``mod.Outer.Inner``).

    Raises:
        ImportError, AttributeError: it does not exist here.
    """
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # longest importable module prefix first
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


@functools.cache
def admitted_by_default() -> tuple[Callable[..., object] | tuple[Callable[..., object], str], ...]:
    """:data:`ADMITTED` as torch's ``safe_globals`` takes it (names absent here are skipped).

    Each entry is registered under the name the pickle uses, so ``numpy.core.multiarray`` files
    written by numpy 1 load under numpy 2 (whose function lives in ``numpy._core``).
    """
    found: list[Callable[..., object] | tuple[Callable[..., object], str]] = []
    for name in ADMITTED:
        try:
            with warnings.catch_warnings():  # numpy 2 warns on its numpy.core shim
                warnings.simplefilter("ignore")
                obj = import_global(name)
        except (ImportError, AttributeError):
            continue
        if callable(obj):
            found.append((obj, name) if qualified_name(obj) != name else obj)
    return (*found, *_numpy_dtype_classes())


def _numpy_dtype_classes() -> list[type]:
    """``numpy.dtypes.Float64DType`` and its siblings: arrays pickle their dtype's class."""
    try:
        import numpy as np
        import numpy.dtypes
    except ImportError:
        return []
    found = (getattr(numpy.dtypes, n) for n in dir(numpy.dtypes))
    return [c for c in found if isinstance(c, type) and issubclass(c, np.dtype)]

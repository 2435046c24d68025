"""llama.cpp's own tools, built once per machine from the source tree a registry package ships.

The tree is ``vendor/llama.cpp`` of the ``llama-cpp-python`` sdist (:data:`SDIST_VERSION`,
fetched from the package index pip uses and checked against :data:`SDIST_SHA256`). It is built
with cmake (the ``cmake`` wheel from PyPI) into ``$BITALLOC_LLAMA_CPP`` (default
``<bitalloc cache>/llama.cpp/<version>``): ``llama-quantize``, ``llama-perplexity``,
``llama-imatrix`` and the shared ``libggml-base`` whose quantizers :mod:`bitalloc.toolkits.ggml`
calls. ``make llama-cpp`` (or ``python -m bitalloc.toolkits.llamacpp build``) runs :func:`build`.

Build flags: ``GGML_NATIVE=OFF`` with AVX2/FMA/F16C. A native build on this project's VMs dies
with "Illegal instruction" in quantized matmuls (the CPU advertises AMX, the VM faults).

Every tool run goes through :func:`run`: a failure raises :class:`ToolFailed` with the tool's
last output lines, and outputs are written beside their target and moved in place only when the
tool succeeded (:func:`produce`), so no partial artifact is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..models.cache import cache_dir
from .process import ToolFailed, ToolkitMissing, produce, run

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ENV_VAR = "BITALLOC_LLAMA_CPP"
TOOLS = ("llama-quantize", "llama-perplexity", "llama-imatrix")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)
MAKE_HINT = "run `make llama-cpp` (builds llama.cpp from the llama-cpp-python sdist, once)"


def home() -> Path:
    """Where the tree and its build live (``$BITALLOC_LLAMA_CPP`` or the bitalloc cache)."""
    root = os.environ.get(ENV_VAR)
    return Path(root).expanduser() if root else cache_dir("llama.cpp", SDIST_VERSION)


def source_dir() -> Path:
    """The extracted ``vendor/llama.cpp`` tree."""
    return home() / "src"


def bin_dir() -> Path:
    return home() / "build" / "bin"


def _stamp() -> Path:
    return home() / "built.json"


def is_built() -> bool:
    """Whether :func:`build` finished here (tools, library and converter present)."""
    return (
        _stamp().is_file()
        and all((bin_dir() / t).is_file() for t in TOOLS)
        and _find_lib("ggml-base") is not None
    )


def tool(name: str) -> Path:
    """Path of built tool ``name`` (``llama-quantize``...); :class:`ToolkitMissing` if absent."""
    if name not in TOOLS:
        raise ValueError(f"`name` must be one of {', '.join(TOOLS)}, got {name!r}")
    path = bin_dir() / name
    if not path.is_file() or not _stamp().is_file():
        raise ToolkitMissing(f"llama.cpp's {name} is not built in {home()}; {MAKE_HINT}")
    return path


def library(name: str = "ggml-base") -> Path:
    """Path of the shared library ``lib<name>.so`` of the build."""
    found = _find_lib(name) if _stamp().is_file() else None
    if found is None:
        raise ToolkitMissing(f"llama.cpp's lib{name} is not built in {home()}; {MAKE_HINT}")
    return found


def _find_lib(name: str) -> Path | None:
    for suffix in (".so", ".dylib"):
        path = bin_dir() / f"lib{name}{suffix}"
        if path.is_file():
            return path
    return None


def converter() -> Path:
    """The tree's own ``convert_hf_to_gguf.py``."""
    path = source_dir() / "convert_hf_to_gguf.py"
    if not path.is_file() or not _stamp().is_file():
        raise ToolkitMissing(f"llama.cpp's convert_hf_to_gguf.py is not in {home()}; {MAKE_HINT}")
    return path


# ---------------------------------------------------------------------- running
def convert_hf(
    model_dir: str | os.PathLike[str], out: str | os.PathLike[str], outtype: str = "f32"
) -> Path:
    """Write a GGUF of the Hugging Face folder ``model_dir`` with the tree's own converter."""
    if outtype not in ("f32", "f16", "bf16"):
        raise ValueError(f"`outtype` must be f32, f16 or bf16, got {outtype!r}")
    script = converter()
    env = {"PYTHONPATH": str(source_dir() / "gguf-py"), "NO_LOCAL_GGUF": ""}
    return produce(
        out,
        lambda tmp: run(
            [sys.executable, script, str(model_dir), "--outfile", tmp, "--outtype", outtype],
            env=env,
        ),
    )


# ---------------------------------------------------------------------- building
def build(
    *, force: bool = False, jobs: int | None = None, log: Callable[[str], None] = print
) -> Path:
    """Fetch, check, extract and build llama.cpp into :func:`home` (a no-op when built)."""
    if is_built() and not force:
        log(f"llama.cpp {SDIST_VERSION} already built in {home()}")
        return home()
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    _stamp().unlink(missing_ok=True)
    if not (source_dir() / "CMakeLists.txt").is_file():
        _extract(_download(root, log), root, log)
    cmake = _cmake()
    build_dir = root / "build"
    log(f"configuring llama.cpp in {build_dir}")
    run([cmake, "-S", source_dir(), "-B", build_dir, *CMAKE_FLAGS], timeout=900)
    n = jobs or os.cpu_count() or 2
    log(f"building {', '.join(TOOLS)} with {n} jobs (about 10 minutes on 2 cores)")
    run([cmake, "--build", build_dir, "--target", *TOOLS, "-j", str(n)], timeout=7200)
    missing = [t for t in TOOLS if not (bin_dir() / t).is_file()]
    if missing or _find_lib("ggml-base") is None:
        raise ToolFailed(f"the build finished without {missing or ['libggml-base']}")
    _stamp().write_text(
        json.dumps({"sdist": SDIST_FILE, "sha256": SDIST_SHA256, "flags": CMAKE_FLAGS}, indent=1)
    )
    log(f"llama.cpp {SDIST_VERSION} built in {root}")
    return root


def _cmake() -> str:
    here = Path(sys.executable).parent / "cmake"
    found = str(here) if here.is_file() else shutil.which("cmake")
    if not found:
        raise ToolkitMissing("cmake is not installed; `pip install cmake` (the `llamacpp` extra)")
    return found


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _download(root: Path, log: Callable[[str], None]) -> Path:
    """The sdist in ``root`` (downloaded from the package index when missing), hash-checked."""
    path = root / SDIST_FILE
    if not path.is_file() or _sha256(path) != SDIST_SHA256:
        url = f"{_index_url()}/{SDIST_NAME}/"
        req = urllib.request.Request(
            url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                files = json.load(r)["files"]
            link = next(f["url"] for f in files if f["filename"] == SDIST_FILE)
            log(f"downloading {SDIST_FILE}")
            produce(path, lambda tmp: urllib.request.urlretrieve(link, tmp))
        except (OSError, ValueError, KeyError, StopIteration) as e:
            raise ToolFailed(f"could not fetch {SDIST_FILE} from {url}: {e}") from None
    digest = _sha256(path)
    if digest != SDIST_SHA256:
        path.unlink()
        raise ToolFailed(f"{SDIST_FILE} has sha256 {digest}, expected {SDIST_SHA256}; removed")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(sdist: Path, root: Path, log: Callable[[str], None]) -> None:
    """Extract ``vendor/llama.cpp`` of ``sdist`` into :func:`source_dir` (staged, then moved)."""
    prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
    stage = Path(tempfile.mkdtemp(prefix=".src.", dir=root))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and len(m.name) > len(prefix):
                    m.name = m.name[len(prefix) :]
                    members.append(m)
            tar.extractall(stage, members=members, filter="data")
        shutil.rmtree(source_dir(), ignore_errors=True)
        os.replace(stage, source_dir())
        log(f"extracted llama.cpp to {source_dir()}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bitalloc.toolkits.llamacpp")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fetch and build llama.cpp's tools (once per machine)")
    b.add_argument("--force", action="store_true", help="rebuild even when built")
    b.add_argument("--jobs", type=int, default=None)
    sub.add_parser("where", help="print the build folder and whether it is built")
    args = p.parse_args(argv)
    if args.cmd == "where":
        print(f"{home()} ({'built' if is_built() else 'not built'})")
        return 0
    try:
        build(force=args.force, jobs=args.jobs)
    except (ToolFailed, ToolkitMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Image build step: export and parity-check the ONNX files of the models ``aegle serve`` serves by default.

Run in the build stage with the image's own Python and torch: each served model gets its cache entry (ONNX file,
α head for α-conditioned enhancers, manifest; named by weights sha256 + graph code, see
``server.inference.backends.cache_stem``), so a start exports nothing and the cache directory can be read-only.
``--check`` (after torch and scipy are uninstalled) loads every served model from that cache as ``aegle serve``
will and fails unless all load and torch was never imported. Exits non-zero when a served model did not load.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(cache_dir: str, check: bool = False) -> int:
    """Load every served model on ONNX Runtime with ``cache_dir`` as cache; 1 if any is missing."""
    from core import InferenceSettings
    from server.inference import InferenceEngine

    settings = InferenceSettings(backend="onnxruntime", cache_dir=Path(cache_dir))
    engine = InferenceEngine.from_settings(settings, warm_up=check)
    try:
        names = [m["name"] for m in engine.models()]
        print(f"{'served from' if check else 'exported'} {', '.join(names)} {'from' if check else 'to'} {cache_dir}")
        if engine.missing:
            print(f"not served: {engine.missing}", file=sys.stderr)
            return 1
    finally:
        engine.close()
    if check and "torch" in sys.modules:
        print("torch was imported: the serving image would need it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    check = "--check" in args
    sys.exit(main(next(a for a in args if a != "--check"), check=check))

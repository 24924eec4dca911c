"""Image build step: export and parity-check the ONNX files of the models ``aegle serve`` serves by default.

Run with the image's own Python and torch, so the cache file names (weights sha256 + graph fingerprint, see
``server.inference.backends.onnx_path``) are the ones the service looks for; a start then exports nothing and the
cache directory can be read-only. Exits non-zero when a served model did not load.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(cache_dir: str) -> int:
    """Load every served model on ONNX Runtime with ``cache_dir`` as cache; 1 if any is missing."""
    from core import InferenceSettings
    from server.inference import InferenceEngine

    settings = InferenceSettings(backend="onnxruntime", cache_dir=Path(cache_dir))
    engine = InferenceEngine.from_settings(settings, warm_up=False)
    try:
        names = [m["name"] for m in engine.models()]
        print(f"exported {', '.join(names)} to {cache_dir}")
        if engine.missing:
            print(f"not served: {engine.missing}", file=sys.stderr)
            return 1
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

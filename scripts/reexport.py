"""Export model packages' ONNX form anew from their torch form, in place, at the exporter's current opset
(ocap_core.package.OPSET): how the shipped models moved from opset 17 to 13, which JetPack 4.6's
onnxruntime 1.10/1.11 and TensorRT 8.2 load. The weights do not change, so neither does what their cards
measured; each card records the version it replaces (provenance.reexported).

    ocap-python scripts/reexport.py [PACKAGE ...]        # default: the four shipped models
"""

import sys

from ocap_core.build import reexport
from ocap_core.package import open_package, resolve_model, shipped_models


def main(names) -> int:
    for name in names or shipped_models():
        pkg = open_package(str(resolve_model(name)))
        new = reexport(pkg, pkg.path, "ocap-python scripts/reexport.py " + name)
        print(f"{pkg.card.version} -> {new.card.version} ({new.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

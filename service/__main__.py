"""``python -m service``: run the serving plane on its own (no control plane yet): serve a model,
log class counts, fill the sample cache, answer the control socket, optionally replay a dataset."""

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ocap_core.errors import OcapError

from .errors import ServiceError


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    ap.add_argument("--model", default="fmnist-cnn", help="package name or directory")
    ap.add_argument("--base", help="the base (teacher) model when --model is a pruned one (default: --model)")
    ap.add_argument("--state-dir", required=True, help="ocap.db and the sample cache go here")
    ap.add_argument("--socket", required=True, help="control socket path")
    ap.add_argument("--providers", default="cpu", help="onnxruntime providers in order, e.g. tensorrt,cuda,cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flush-seconds", type=float, default=5.0)
    ap.add_argument("--teacher-share", type=float, default=0.1, help="share of frames the base model checks "
                    "while a pruned model serves")
    ap.add_argument("--cache-per-class", type=int, default=256, help="cached samples per class")
    ap.add_argument("--cache-quota-mb", type=float, default=256.0, help="byte quota of the sample cache, in MiB")
    ap.add_argument("--source", choices=["none", "replay", "directory", "camera"], default="none")
    ap.add_argument("--data", default="fashion-mnist", help="replay: fashion-mnist, an image folder or an .npz")
    ap.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                    help="replay: the split of --data to replay (all: every image, for a small data set)")
    ap.add_argument("--rate", type=float, default=20.0, help="replay: frames per second")
    ap.add_argument("--mix", default="", help="replay: class mix schedule, e.g. '0:0.5,3:0.5@10m; 7:1@5m'")
    ap.add_argument("--spool", help="directory: the folder to watch")
    ap.add_argument("--done-dir", help="directory: move handled files here (default: delete them)")
    ap.add_argument("--reject-dir", help="directory: unreadable files go here (default: STATE_DIR/rejected)")
    ap.add_argument("--camera", default="0", help="camera: device index or GStreamer pipeline")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from ocap_core.data import load_dataset

    from .server import Server, ServerConfig
    from .sources import CameraSource, DirectorySource, RejectedFrames, ReplaySource, data_misfit, parse_mix

    try:
        config = ServerConfig(providers=tuple(args.providers.split(",")), threads=args.threads,
                              flush_seconds=args.flush_seconds, teacher_share=args.teacher_share,
                              cache_per_class=args.cache_per_class, cache_quota=int(args.cache_quota_mb * 2 ** 20))
        server = Server(args.model, Path(args.state_dir), Path(args.socket), config, base=args.base)
        source = None
        rejects = RejectedFrames(args.source, server.events)
        if args.source == "replay":
            # in the model's class space: folder names map to its class ids, other labels are an error
            data = load_dataset(args.data, args.split, class_names=server.base.card.class_names)
            why = data_misfit(data.x, data.y, server.base.card)
            if why:
                raise ServiceError(f"--data {args.data}: {why}")
            mix = parse_mix(args.mix or ",".join(f"{k}:1" for k in np.unique(data.y)) + "@1h",
                            len(server.base.card.class_names))
            source = ReplaySource(data.x, data.y, lambda img: server.infer(img[None]), args.rate, mix,
                                  rejects=rejects)
        elif args.source == "directory":
            if not args.spool:
                raise ServiceError("--source directory needs --spool DIR")
            source = DirectorySource(Path(args.spool), server.infer,
                                     Path(args.reject_dir or Path(args.state_dir) / "rejected"),
                                     Path(args.done_dir) if args.done_dir else None, rejects=rejects)
        elif args.source == "camera":
            source = CameraSource(args.camera, server.infer, tuple(server.slot.current().card.input.shape),
                                  rate=args.rate, rejects=rejects)
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        server.start()
    except (OcapError, ServiceError) as e:
        print(f"python -m service: {e}", file=sys.stderr)
        return 1
    if source:
        source.start()
    logging.getLogger("service").info("serving %s; control socket %s", server.slot.current().version, args.socket)
    while not done.wait(0.5):
        pass
    if source:
        source.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

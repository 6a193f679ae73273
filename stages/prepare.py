"""Stage prepare: turn a raw picture collection into the uint8 arrays train and predict load.

Reads:  --source, a folder or archive in the image-folder layout (`train/<class>/<image>`,
        `test/<class>/<image>`; folder, .tar, .tar.gz/.tgz or .zip) or an official
        CIFAR-10/100 python tarball; params.yaml's `prepare:` section.
Writes: --out, replaced atomically (layout: confusion_embeddings/data/prepared.py);
        --metrics (format, classes, image shape, pictures per split); --timings.
"""

from __future__ import annotations

import time

from confusion_embeddings.config.prepare import SCHEMA
from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.data.prepare import prepare


def main(argv: list[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        {
            "--source": "folder or archive to read",
            "--out": "output folder (replaced)",
            "--metrics": "metrics JSON to write",
            "--timings": "timings JSON to write",
        },
        argv,
    )
    params = load_params("prepare", SCHEMA, args.params)
    start = time.perf_counter()
    metrics = prepare(args.source, args.out, params)
    seconds = time.perf_counter() - start
    counts = metrics["pictures"]
    print(
        f"prepare: {metrics['format']}, {metrics['classes']} classes, {counts['train']} train + "
        f"{counts['test']} test pictures of {metrics['image_shape'][0]}x"
        f"{metrics['image_shape'][1]} in {seconds:.1f} s -> {args.out}"
    )
    for path in (args.metrics, args.timings):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.metrics, metrics)
    write_json(args.timings, {"seconds": round(seconds, 3)})


if __name__ == "__main__":
    run_main(main)

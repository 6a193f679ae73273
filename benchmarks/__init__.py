"""Speed and precision measurements, each beside its results (docs/benchmarks.md).

    run.py              `make bench`: train step, inference, bf16, dvc repro, pairs at
                        ImageNet's size, against PyTorch CPU -> results.json (the CPU of
                        the committed run; results_no_avx512.json: the AMD EPYC without
                        AVX-512, where the f32 step was checked against PyTorch)
    torch_reference.py  the project's CNN in PyTorch, for run.py's side-by-side figures
    xla_onednn.py       XLA's own oneDNN convolutions against the project's kernel
    onednn_kernels.py   which oneDNN kernels the train step runs on this CPU
    pairs_many_classes.py  pairs -> embed -> evaluate on an ImageNet-sized predictions file
    resampling.py       what resampling over pictures and the Python API cost
                        -> resampling.json, api.json
    engines.py          embed's two engines side by side on one pairs file -> engines.json
    bf16_predictions.py how far bf16 moves the guesses and the similarity table
    synthetic.py        synthetic predictions files with a planted confusion structure
                        (engines.py; the tests import it too)
    lock_diff.py        a tool: two dvc.lock files compared output by output

Studies of the method (recipe, engine, unseen classes) live in method_studies/; the
pipeline never imports either.
"""

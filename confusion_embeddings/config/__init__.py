"""The method's params sections, one frozen typed config per stage, one module per section:

    params.yaml section   config                       read by
    classifiers           pairs.ClassifiersConfig      the pairs stage (which files to read)
    pairs                 pairs.PairsConfig            pairs.py
    embed                 embed.EmbedConfig            embedding/
    resample              resample.ResampleConfig      embedding/resampling.py
    evaluate              evaluate.EvaluateConfig      evaluation/, method.py

Each field is a `knob` (core/params.py): its default, type and range, and a comment that says
why, in one place; params.yaml spells the same values out (tests/test_dvc_yaml.py checks the
two agree). A stage builds its config once (`Config.load`), passes it whole and saves it whole
(`to_dict`) in its manifest. Each stage's DVC deps name only its own section's module, so a
new default reruns only the stages that read it. The classifiers' sections (prepare, train,
predict, hosts) keep theirs beside the code that runs them: data/prepare.py, cnn/config.py,
cnn/inference.py, host.py.
"""

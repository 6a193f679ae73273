"""Every params section's knobs and defaults, one module per section:

    params.yaml section   config                       read by
    prepare               prepare.PrepareConfig        data/prepare.py
    train                 train.SCHEMA                 cnn/config.py (TrainParams, RunConfig)
    hosts                 hosts.HostsConfig            host.py (and train.cpu_devices)
    predict               predict.PredictConfig        cnn/run.py, cnn/inference.py
    classifiers           pairs.ClassifiersConfig      the pairs stage (which files to read)
    pairs                 pairs.PairsConfig            pairs.py
    embed                 embed.EmbedConfig            embedding/
    resample              resample.ResampleConfig      embedding/resampling.py
    evaluate              evaluate.EvaluateConfig      evaluation/, method.py

Each field is a `knob` (section.py): its default, type and range, and a comment that says
why, in one place; params.yaml spells the same values out (tests/test_dvc_yaml.py checks the
two agree). A stage builds its config once (`Config.load`), passes it whole and saves it whole
(`to_dict`) in its manifest. Each stage's DVC deps name only its own section's module, so a
new default reruns only the stages that read it. train's typed form is cnn/config.py's
TrainParams, saved with each model inside its RunConfig.
"""

"""Studies of the method: which choices give tables one can trust, each beside its results.

    recipe_study.py   which classifier recipe gives ranked guesses the method can read
                      (docs/recipe.md) -> recipe_study*.json; recipe_levers_exp_show.csv is
                      `dvc exp show --csv` of the recipe-lever experiments
    engine_study.py   which embed engine holds from a few hundred pictures to ImageNet's size
                      (docs/design/embedding-engines.md) -> engine_study.json
    unseen_study.py   the leave-one-class-out table (docs/unseen.md) -> unseen_study.json;
                      unseen_study_exp_show.csv is `dvc exp show --csv` of those experiments

Each reads DVC experiments or predictions files and writes its JSON here. Speed measurements
live in benchmarks/; the pipeline never imports either.
"""

"""How well class vectors reflect the confusions: scores, the report and the plots.

scores.py          compute_figures: every figure of a table, put together (`Evaluation`)
uncertainty.py     intervals and stability from the refits on redrawn pictures
confusion.py       what the pairs say on their own (confusion rates, the lower guesses)
ranking.py         rank statistics of tables (Spearman vs confusion, reliability)
groups.py          class groups (separation, agreement, ARI) and the linkage tree
projection.py      the class map (metric MDS)
caveats.py         the warnings, each naming its threshold and the remedy
unseen.py          classes the classifiers never saw: placement and new-or-known scores
report.py          the markdown report, the metrics and what the evaluate stage prints
plots.py           the heatmap, dendrogram, class map and the similarity table CSV
table_difference.py  two tables against the noise of each (what compare.py prints)
"""

"""How well class vectors reflect the confusions: scores, the report and the plots."""

"""ncood: L2 feature normalization, Neural Collapse and OoD detection experiments (DDU benchmark).

Pipeline, one module per step: data -> models -> train -> measure (collapse, ood, evaluate) -> track -> tune ->
aggregate -> serve. See README.md.
"""
__version__ = "0.1.0"

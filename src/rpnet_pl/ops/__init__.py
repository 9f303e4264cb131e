"""Pure functions shared by the stages: metrics, CAM helpers, denseCRF, path indices,
affinities from boundaries and the random walk.

Nothing here imports ``rpnet_pl.models`` or ``rpnet_pl.stages``; import the submodule you
need (``from rpnet_pl.ops.metrics import miou``) so that, for example, evaluating a run does
not load the CRF extension.
"""

"""Graph passes, one per file. Each module has ``run(graph) -> PassResult`` and a
docstring stating its rewrite rules. ``PASSES`` names them for pipelines."""
from . import eliminate_dead_nodes, fold_constants, remove_identity

PASSES = {
    "fold_constants": fold_constants.run,
    "remove_identity": remove_identity.run,
    "eliminate_dead_nodes": eliminate_dead_nodes.run,
}

# The cleanups every pipeline starts with; later passes append to DEFAULT_PIPELINE.
CLEANUP = ["fold_constants", "remove_identity", "eliminate_dead_nodes"]
DEFAULT_PIPELINE = list(CLEANUP)

"""Graph passes, one per file. Each module has ``run(graph) -> PassResult`` and a
docstring stating its rewrite rules. ``PASSES`` names them for pipelines."""

from . import (
    drop_zero_bias,
    eliminate_dead_nodes,
    fold_constants,
    fold_conv_bn,
    fuse_blocks,
    lower_sequences,
    prune_channels,
    remove_identity,
)

PASSES = {
    "fold_constants": fold_constants.run,
    "remove_identity": remove_identity.run,
    "drop_zero_bias": drop_zero_bias.run,
    "eliminate_dead_nodes": eliminate_dead_nodes.run,
    "fold_conv_bn": fold_conv_bn.run,
    "fuse_blocks": fuse_blocks.run,  # annotates block-fusion groups (node.meta); not in the default
    "prune_channels": prune_channels.run,  # `optimize --prune R`; not in the default
    "lower_sequences": lower_sequences.run,  # at import (fuser.frontends.normalize); not in the default
}

# The cleanups every pipeline starts with; later passes append to DEFAULT_PIPELINE.
CLEANUP = ["fold_constants", "remove_identity", "drop_zero_bias", "eliminate_dead_nodes"]
DEFAULT_PIPELINE = CLEANUP + ["fold_conv_bn"]

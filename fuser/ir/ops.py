"""The ONNX operators fuser understands, by role.

An op outside SUPPORTED_OPS is refused by name at import: fuser never guesses
what an unknown op does. Every op here has a torch implementation in
``fuser.backends.torch_backend`` and a cost rule in ``fuser.analysis``.
"""

CONV_OPS = {"Conv", "ConvTranspose"}
MATMUL_OPS = {"Gemm", "MatMul"}
NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LRN"}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
# Elementwise, one output element per input element (after broadcasting).
UNARY_OPS = {
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Erf",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Sqrt",
    "Reciprocal",
    "Gelu",
    "LeakyRelu",
    "Elu",
    "Softplus",
    "Mish",
    "Identity",
    "Dropout",
    "Cast",
    "CastLike",
    "Floor",
    "Ceil",
    "Not",
    "Sin",
    "Cos",
    "PRelu",
}
BINARY_OPS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Equal",
    "Less",
    "Greater",
    "Where",
    "And",
    "Or",
    "Mod",
}
REDUCE_OPS = {
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL2",
    "Softmax",
    "LogSoftmax",
    "ArgMax",
}
# Move or reinterpret data without arithmetic.
SHAPE_OPS = {
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Expand",
    "Tile",
    "Pad",
    "Resize",
    "Upsample",
    "DepthToSpace",
    "SpaceToDepth",
}
# Produce (usually small) tensors from shapes; folded away once shapes are static.
SOURCE_OPS = {"Constant", "ConstantOfShape", "Shape", "Range", "Size"}

SUPPORTED_OPS = (
    CONV_OPS | MATMUL_OPS | NORM_OPS | POOL_OPS | UNARY_OPS | BINARY_OPS | REDUCE_OPS | SHAPE_OPS | SOURCE_OPS
)

# Admitted at import only: fuser.passes.lower_sequences turns them into Split.
SEQUENCE_OPS = {"SplitToSequence", "SequenceAt"}

CONTROL_FLOW_OPS = {"If", "Loop", "Scan", "SequenceMap"}
ELEMENTWISE_OPS = UNARY_OPS | BINARY_OPS

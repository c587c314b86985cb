"""One-node ONNX models for the ONNX Runtime peer of ``python -m fastnorm bench``.

The models are written as protobuf bytes by hand, so the benchmark needs only
``onnxruntime`` (not the ``onnx`` package, which the ``bench`` extra does not install).
A model is a graph of one node: input ``x`` of a fixed shape, the node's parameters as
initializers (constants, as in an exported network), output ``y``.  Field numbers are
those of onnx.proto3; only the handful a one-node graph needs are written.
"""

import struct

import numpy as np

# TensorProto.DataType values.
_ONNX_DTYPE = {"float32": 1, "float16": 10, "float64": 11, "bfloat16": 16}

# opset that introduced each operator we build (BatchNormalization 15: training_mode
# output semantics and separate dtypes for the running statistics).
OPSET = {"LayerNormalization": 17, "RMSNormalization": 23, "BatchNormalization": 15,
         "GroupNormalization": 21}

_IR_VERSION = 8  # understood by every onnxruntime that knows opset 17


# ---- protobuf wire format: varint / length-delimited / fixed32 fields -----------------


def _varint(value):
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 are written as 10-byte two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int_field(number, value):
    return _varint(number << 3) + _varint(value)


def _bytes_field(number, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _float_field(number, value):
    return _varint((number << 3) | 5) + struct.pack("<f", value)


# ---- ONNX messages ----------------------------------------------------------------------


def _tensor(name, array, dtype_name):
    """TensorProto: dims=1, data_type=2, name=8, raw_data=9 (little-endian bytes)."""
    body = b"".join(_int_field(1, d) for d in array.shape)
    body += _int_field(2, _ONNX_DTYPE[dtype_name]) + _bytes_field(8, name)
    return body + _bytes_field(9, np.ascontiguousarray(array).tobytes())


def _value_info(name, shape, dtype_name):
    """ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2}}}."""
    dims = b"".join(_bytes_field(1, _int_field(1, d)) for d in shape)
    tensor_type = _int_field(1, _ONNX_DTYPE[dtype_name]) + _bytes_field(2, dims)
    return _bytes_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


def _attribute(name, value):
    """AttributeProto: name=1, f=2 (type FLOAT=1) or i=3 (type INT=2), type=20."""
    if isinstance(value, float):
        return _bytes_field(1, name) + _float_field(2, value) + _int_field(20, 1)
    return _bytes_field(1, name) + _int_field(3, value) + _int_field(20, 2)


def model_bytes(op_type, x_shape, dtype_name, params, attributes, outputs=("y",)):
    """Serialized ModelProto of one ``op_type`` node: inputs ``x`` then ``params``.

    params: list of (name, array, dtype_name) initializers, in the operator's input order.
    attributes: dict name -> float or int.  outputs: the node's output names; the first is
    the graph output ``y`` (shape ``x_shape``), the others are left unconnected.
    """
    node = _bytes_field(1, "x")
    node += b"".join(_bytes_field(1, name) for name, _, _ in params)
    node += b"".join(_bytes_field(2, name) for name in outputs)
    node += _bytes_field(4, op_type)
    node += b"".join(_bytes_field(5, _attribute(k, v)) for k, v in attributes.items())
    graph = _bytes_field(1, node) + _bytes_field(2, "fastnorm_bench")
    graph += b"".join(_bytes_field(5, _tensor(n, a, d)) for n, a, d in params)
    graph += _bytes_field(11, _value_info("x", x_shape, dtype_name))
    graph += _bytes_field(12, _value_info(outputs[0], x_shape, dtype_name))
    opset = _bytes_field(1, "") + _int_field(2, OPSET[op_type])
    return _int_field(1, _IR_VERSION) + _bytes_field(7, graph) + _bytes_field(8, opset)

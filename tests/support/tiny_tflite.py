"""A tiny, valid TFLite "embedding model", written field by field with the TFLite flatbuffer schema.

Why: the identification plumbing (signed bundle, interpreter from verified bytes, enrolment,
matching) must be tested where ../shared and its MobileFaceNet are absent, without committing a
binary. The model is two builtin operators: RESHAPE the [1, S, S, 3] float32 input to
[1, E, S*S*3/E] and MEAN over the last axis, giving [1, E] numbers (the mean of each run of
pixels). It recognises nobody, but it loads and runs in LiteRT and tflite_runtime like any
embedding model. About 700 bytes; built with `flatbuffers` (a dependency of ai-edge-litert).

Field numbers follow tensorflow/lite/schema/schema.fbs: Model(version 0, operator_codes 1,
subgraphs 2, description 3, buffers 4); OperatorCode(deprecated_builtin_code 0, version 2,
builtin_code 3); SubGraph(tensors 0, inputs 1, outputs 2, operators 3, name 4); Tensor(shape 0,
type 1, buffer 2, name 3); Operator(opcode_index 0, inputs 1, outputs 2); Buffer(data 0).
"""
from __future__ import annotations

import numpy as np

RESHAPE, MEAN = 22, 40  # BuiltinOperator
FLOAT32, INT32 = 0, 2  # TensorType
FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3


def tiny_embedding_model(size: int = 112, embedding: int = 128) -> bytes:
    import flatbuffers

    values = size * size * 3
    assert values % embedding == 0, "the pixels must split evenly into the embedding's runs"
    b = flatbuffers.Builder(1024)

    def ints(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependInt32(item)
        return b.EndVector()

    def table_vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    def buffer(data: bytes | None) -> int:
        vector = b.CreateByteVector(data) if data else None
        b.StartObject(3)
        if vector is not None:
            b.PrependUOffsetTRelativeSlot(0, vector, 0)
        return b.EndObject()

    def tensor(shape: list[int], kind: int, buffer_index: int, name: str) -> int:
        shape_vec, name_str = ints(shape), b.CreateString(name)
        b.StartObject(8)
        b.PrependUOffsetTRelativeSlot(0, shape_vec, 0)
        b.PrependInt8Slot(1, kind, 0)
        b.PrependUint32Slot(2, buffer_index, 0)
        b.PrependUOffsetTRelativeSlot(3, name_str, 0)
        return b.EndObject()

    def operator(opcode: int, inputs: list[int], outputs: list[int]) -> int:
        ins, outs = ints(inputs), ints(outputs)
        b.StartObject(9)
        b.PrependUint32Slot(0, opcode, 0)
        b.PrependUOffsetTRelativeSlot(1, ins, 0)
        b.PrependUOffsetTRelativeSlot(2, outs, 0)
        return b.EndObject()

    def operator_code(code: int) -> int:
        b.StartObject(4)
        b.PrependInt8Slot(0, code, 0)
        b.PrependInt32Slot(2, 1, 1)
        b.PrependInt32Slot(3, code, 0)
        return b.EndObject()

    new_shape = np.array([1, embedding, values // embedding], "<i4").tobytes()
    axis = np.array([2], "<i4").tobytes()
    buffers = [buffer(None), buffer(None), buffer(new_shape), buffer(None), buffer(axis), buffer(None)]
    tensors = [tensor([1, size, size, 3], FLOAT32, 1, "input"),
               tensor([3], INT32, 2, "new_shape"),
               tensor([1, embedding, values // embedding], FLOAT32, 3, "runs"),
               tensor([1], INT32, 4, "axis"),
               tensor([1, embedding], FLOAT32, 5, "embedding")]
    operators = [operator(0, [0, 1], [2]), operator(1, [2, 3], [4])]
    tensors_vec, operators_vec = table_vector(tensors), table_vector(operators)
    inputs_vec, outputs_vec, name = ints([0]), ints([4]), b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, inputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, outputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, operators_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, name, 0)
    subgraph = b.EndObject()
    codes = [operator_code(RESHAPE), operator_code(MEAN)]
    codes_vec, subgraphs_vec, buffers_vec = table_vector(codes), table_vector([subgraph]), table_vector(buffers)
    description = b.CreateString("edge-camera test: tiny embedding model")
    b.StartObject(8)
    b.PrependUint32Slot(0, SCHEMA_VERSION, 0)
    b.PrependUOffsetTRelativeSlot(1, codes_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, description, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers_vec, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())

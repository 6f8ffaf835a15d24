"""The platform's `DataSpecification` message (metadata.textproto), built without protoc.

The platform ships `data.proto` (package `autodl`, proto2) compiled to `data_pb2.py`. Only
`DataSpecification` and `MatrixSpec` are used on disk, so this module declares exactly those
two messages through a FileDescriptorProto; the text format read and written is identical.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_F = descriptor_pb2.FieldDescriptorProto

# MatrixSpec.Format values.
DENSE, SPARSE, COMPRESSED = 0, 1, 2


def _field(msg, name: str, number: int, ftype: int, label: int = _F.LABEL_OPTIONAL,
           type_name: str | None = None, default: str | None = None) -> None:
    field = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        field.type_name = type_name
    if default is not None:
        field.default_value = default


def _map_field(msg, name: str, number: int, entry_name: str, value_type: int) -> None:
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, value_type)
    _field(msg, name, number, _F.TYPE_MESSAGE, _F.LABEL_REPEATED,
           type_name=f".autodl.DataSpecification.{entry_name}")


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="autodl_data_spec.proto", package="autodl",
                                              syntax="proto2")
    matrix = file.message_type.add(name="MatrixSpec")
    fmt = matrix.enum_type.add(name="Format")
    for value_name, value in (("DENSE", DENSE), ("SPARSE", SPARSE), ("COMPRESSED", COMPRESSED)):
        fmt.value.add(name=value_name, number=value)
    _field(matrix, "col_count", 1, _F.TYPE_INT32)
    _field(matrix, "row_count", 2, _F.TYPE_INT32)
    _field(matrix, "is_sequence_col", 3, _F.TYPE_BOOL)
    _field(matrix, "is_sequence_row", 4, _F.TYPE_BOOL)
    _field(matrix, "has_locality_col", 5, _F.TYPE_BOOL)
    _field(matrix, "has_locality_row", 6, _F.TYPE_BOOL)
    _field(matrix, "is_sparse", 7, _F.TYPE_BOOL)
    _field(matrix, "format", 8, _F.TYPE_ENUM, type_name=".autodl.MatrixSpec.Format",
           default="DENSE")
    _field(matrix, "num_channels", 9, _F.TYPE_INT32, default="-1")

    spec = file.message_type.add(name="DataSpecification")
    _field(spec, "matrix_spec", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED,
           type_name=".autodl.MatrixSpec")
    _field(spec, "is_sequence", 2, _F.TYPE_BOOL)
    _field(spec, "output_dim", 3, _F.TYPE_INT32)
    _map_field(spec, "label_to_index_map", 4, "LabelToIndexMapEntry", _F.TYPE_INT32)
    _map_field(spec, "feature_to_index_map", 5, "FeatureToIndexMapEntry", _F.TYPE_INT32)
    _map_field(spec, "channel_to_index_map", 6, "ChannelToIndexMapEntry", _F.TYPE_INT32)
    _field(spec, "sequence_size", 7, _F.TYPE_INT32, default="1")
    _field(spec, "sample_count", 8, _F.TYPE_INT32)
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())
DataSpecification = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("autodl.DataSpecification"))
MatrixSpec = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("autodl.MatrixSpec"))


def parse_data_spec(text: str, source: str = "<string>"):
    """Parse metadata.textproto text into a DataSpecification; errors name `source`."""
    spec = DataSpecification()
    try:
        text_format.Merge(text, spec)
    except text_format.ParseError as err:
        raise ValueError(f"{source}: not a valid DataSpecification text proto: {err}") from err
    return spec


def format_data_spec(spec) -> str:
    """Text-proto form of a DataSpecification, as written into metadata.textproto."""
    return text_format.MessageToString(spec)

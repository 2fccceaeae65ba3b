"""Write an F32 copy of a GGUF file (for llama.cpp): the same metadata, every tensor dequantized.

Why: pagedkv's default model ships as a Q4_1 GGUF that pagedkv dequantizes to float32 once (its
model cache). llama.cpp computing on the Q4_1 file would use other weights and other kernels;
the F32 copy has exactly the float32 weights every other engine in the comparison computes with
(dequantization is deterministic), and keeps llama.cpp's own tensor layout and tokenizer
metadata. Needs only the ``gguf`` package (pagedkv's venv has it).

    python benchmarks/peers/gguf_f32.py SRC.gguf DST.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

_SKIP = ("GGUF.", "general.file_type", "general.architecture")


def convert(src: Path, dst: Path) -> None:
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith(_SKIP):
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(0)  # ALL_F32
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF lists dims fastest-first; numpy wants them slowest-first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        writer.add_tensor(t.name, data.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gguf_f32.py SRC.gguf DST.gguf")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))

#include "cpu/decoded_record.h"

#include <new>
#include <stdexcept>

namespace onnxcomp {

DecodeStatus decode_record_bytes(const uint8_t* data, size_t size, DecodedRecord* out) {
  RecordInfo info;
  DecodeStatus status = parse_record(data, size, &info);
  if (!status.ok()) return status;
  try {
    DecodedRecord& r = *out;
    r.dims.assign(info.dims, info.dims + info.rank);
    r.num_elements = static_cast<int64_t>(info.num_elements);
    r.index_bits = info.index_bits;
    r.codebook.resize(info.codebook_size);
    void* indices;
    if (r.wide()) {
      r.indices16.resize(info.num_elements);
      r.indices8.clear();
      indices = r.indices16.data();
    } else {
      r.indices8.resize(info.num_elements);
      r.indices16.clear();
      indices = r.indices8.data();
    }
    const uint64_t workspace_bytes = decode_workspace_bytes(info);
    std::vector<uint32_t> workspace((workspace_bytes + 3) / 4);
    return decode_record(data, info, r.codebook.data(), indices, workspace.data(), workspace.size() * 4);
  } catch (const std::bad_alloc&) {
    return decode_fail(DecodeError::kBadArgument, "not enough memory to hold the decoded indices");
  } catch (const std::length_error&) {
    return decode_fail(DecodeError::kBadArgument, "not enough memory to hold the decoded indices");
  }
}

}  // namespace onnxcomp
